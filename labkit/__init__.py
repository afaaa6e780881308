"""labkit: the helper package of the efficient-deep-learning lab course.

Data, models, the training loop, metrics, plots and the run profile. It never
contains the solution of anything students are graded on.
"""
from labkit.profile import get_profile, seed_everything, setup_notebook

__all__ = ["get_profile", "seed_everything", "setup_notebook"]
__version__ = "0.1.0"
