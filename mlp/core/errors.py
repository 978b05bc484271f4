"""The one-line error type, for the library: it lives with the data layer, below everything."""

from input_pipeline.errors import UserError

__all__ = ['UserError']
