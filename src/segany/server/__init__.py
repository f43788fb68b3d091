"""segany's HTTP server: `create_app(settings)` in `segany.server.app`, `segany serve` in `segany.server.launch`.

Kept empty of imports so that `segany.server.<module>` stays cheap to import on its own.
"""
