"""The diffusion pipeline layer: load a Stable Diffusion pipeline and generate images.

No Ray imports here: this layer is usable (and tested) on its own, and the serving layer above it
(`serve/`) is the only place that knows about Ray Serve.
"""
