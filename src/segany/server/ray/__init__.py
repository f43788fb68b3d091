"""`segany serve --ray`: Ray Serve deployments (ingress with image affinity, model replicas); needs segany[ray].

`segany.server.ray_serve` parses the options and starts them; see docs/scale-out.md.
"""
