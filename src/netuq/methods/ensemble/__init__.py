"""Deep ensembles (Lakshminarayanan et al. 2017): the :class:`Ensemble` wrapper and
:func:`train_ensemble`, cross-validated member training that resumes after an interruption.

* :class:`Ensemble` averages its members' **probabilities** (never logits) and returns a
  :class:`~netuq.Prediction` with the decomposition total = aleatoric + epistemic (mutual
  information between the prediction and the member). Members of one architecture can run as
  one vectorised call (``torch.func.vmap`` over stacked weights); by default where that is
  faster (CUDA), else in a loop (CPU).
* :func:`train_ensemble` trains one member per fold of a stratified k-fold split (netuq's default;
  each member keeps the checkpoint with the lowest validation NLL on its held-out fold), or by
  bagging (``"bootstrap"``), or every member on all the data with its own seed (``"full"``, the
  paper's recipe), from a Dataset, a DataLoader or an ``(x, y)`` tuple. With ``checkpoint_dir``
  each finished member is written atomically and a rerun trains only the missing ones; under
  ``torchrun`` the members are shared out among the processes.

Files in a checkpoint / save directory: ``manifest.json`` (format, member count, file names, the
training configuration) and ``member_<k>.pt`` (``{"state_dict": ..., "meta": {...}}``, loadable
with ``torch.load(weights_only=True)``). :meth:`Ensemble.load` reads both kinds.

Modules: ``wrapper`` (:class:`Ensemble`, the vmap rule), ``splits`` (:func:`make_splits`, seeds,
fingerprints), ``data`` (Dataset / DataLoader / tuple input), ``files`` (manifest and member
files), ``train`` (:func:`train_ensemble` and resume), ``distributed`` (members across ranks).
"""

from .splits import SPLITS, make_splits
from .train import train_ensemble
from .wrapper import Ensemble, prefers_vmap

__all__ = ["Ensemble", "train_ensemble", "make_splits", "SPLITS", "prefers_vmap"]
