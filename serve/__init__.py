"""Ray Serve glue: the HTTP ingress, the diffusion worker deployment, and the application builder.

The only package that imports ``ray.serve``; it composes :mod:`models` (the pipeline) and
:mod:`scheduler` (the decisions).
"""
