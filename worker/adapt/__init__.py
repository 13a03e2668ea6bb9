"""Domain adaptation: fit a trained model to unlabeled images of the deployment domain.

worker.adapt.run.adapt() is the entry point (called after training, before export);
one module per method: adabn, tent, dann, mcc, pseudo_label (dann and mcc share joint's
training loop); auto tries them in turn and keeps the best on labelled target images;
report holds the measurements
and the guard that keeps the unadapted model when adaptation made things worse.
"""

from worker.adapt.common import AdaptResult
from worker.adapt.run import adapt
from worker.errors import AdaptationNotApplicable

__all__ = ["AdaptResult", "AdaptationNotApplicable", "adapt"]
