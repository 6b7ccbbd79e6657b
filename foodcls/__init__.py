"""foodcls: sort packaged food into four classes from four nutrition-label numbers."""

__version__ = "0.1.0"
