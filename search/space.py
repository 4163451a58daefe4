"""Search spaces; they live in `supernet.space` so supernet training can sample from them without importing search."""

from supernet.space import SPACES, LayerSpace, PerLayerSpace, SearchSpace, UniformSpace, make_space

__all__ = ["SPACES", "LayerSpace", "PerLayerSpace", "SearchSpace", "UniformSpace", "make_space"]
