"""aop-ray: learned unmasking orders (Adaptive Order Policies) for masked diffusion models."""

__version__ = "0.1.0"
