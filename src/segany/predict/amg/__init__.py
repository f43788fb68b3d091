"""Automatic mask generation ("segment everything"): grids, crops, decoding, filters, records."""
