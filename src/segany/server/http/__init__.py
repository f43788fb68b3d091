"""HTTP plumbing shared by every dialect: auth, limits, errors, image sources, encodings, health."""
