"""priorshift: is the image behind these measurements from the prior's distribution — and where is it not?"""

__version__ = "0.1.0"
