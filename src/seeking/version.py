"""seeking's version, on the ground floor: any module may import it without importing the package.

0.2.0: the training-state schema changed (issue 14), so a 0.1.0 checkpoint or run folder is refused.
"""

__version__ = "0.2.0"
