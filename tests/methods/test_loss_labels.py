"""The training losses' ``ignore_index`` never wraps in the labels' dtype, validated or not.

``labels != ignore_index`` runs in the labels' dtype: with uint8 labels, -100 is 156, so class 156
would silently leave the loss. ``validate_args=False`` skips the value checks, not this one (the
same pattern as the calibration loader of issue 22.3).
"""

from __future__ import annotations

import pytest
import torch

from netuq.methods.confidence import confidence_loss
from netuq.methods.heteroscedastic import heteroscedastic_loss

C = 200


@pytest.mark.parametrize("validate_args", [True, False])
def test_a_label_dtype_that_cannot_hold_ignore_index_is_refused(validate_args):
    g = torch.Generator().manual_seed(0)
    z, s = torch.randn(4, C, generator=g), torch.randn(4, generator=g)
    y = torch.tensor([156, 3, 156, 7], dtype=torch.uint8)
    match = r"`ignore_index` must be representable in the dtype of `labels` \(torch.uint8"
    with pytest.raises(ValueError, match=match):
        confidence_loss(z, s, y, lmbda=0.1, ignore_index=-100, validate_args=validate_args)
    with pytest.raises(ValueError, match=match):
        heteroscedastic_loss(z, torch.ones(4, C), y, samples=2, ignore_index=-100, validate_args=validate_args)
    # a dtype that holds it: the same loss as int64 labels
    kw = {"lmbda": 0.1, "ignore_index": 255, "generator": torch.Generator().manual_seed(1)}
    want = confidence_loss(z, s, y.long(), **kw)
    kw["generator"] = torch.Generator().manual_seed(1)
    assert torch.equal(confidence_loss(z, s, y, **kw), want)
