"""Real third-party networks as users bring them (issue 23): torchvision, timm, Hugging Face
transformers and segmentation-models-pytorch, built from their configurations with random weights
(no download: ``weights=None`` / ``pretrained=False`` / a config, ``HF_HUB_OFFLINE=1``), on tiny
inputs, through ``predict``, ``compare``, ``MCDropout``, ``TTA``, ``add_dropout``, ``Ensemble``,
``train_ensemble`` and ``fit``. No mocks of the libraries: their own modules run."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch import nn

import netuq
from netuq.nn import add_dropout

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never the network
tv = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
smp = pytest.importorskip("segmentation_models_pytorch")


def _quiet_add_dropout(model, p, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_dropout(model, p, **kw)
    return [str(w.message) for w in caught]


def _images(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hf_vit(**dropout):
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=4, **dropout,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(cfg).eval()


def _timm_vit(**kw):
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4, **kw
    ).eval()


def _whole(mc: netuq.MCDropout) -> netuq.MCDropout:
    """The same sampler forced to sample the whole model (the uncached path), for comparisons."""
    from netuq.methods._structure import Findings

    mc._findings = Findings()
    return mc


# ------------------------------------------------------------- every entry point, every library
def _tv_resnet(seed):
    torch.manual_seed(seed)
    return tv.models.resnet18(weights=None, num_classes=4).eval()


def _tv_mobilenet(seed):
    torch.manual_seed(seed)
    net = tv.models.mobilenet_v3_small(weights=None, num_classes=4).eval()
    with torch.no_grad():  # random init leaves its logits ~1e-11 (every class tied): make the head count
        net.classifier[0].bias.normal_()
    return net


def _timm(name, **kw):
    def make(seed):
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, num_classes=4, **kw).eval()

    return make


def _timm_vit_seeded(seed):
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4, drop_rate=0.2
    ).eval()


CLASSIFIERS = {
    "tv_resnet18": _tv_resnet,
    "tv_mobilenet_v3_small": _tv_mobilenet,
    "timm_resnet18": _timm("resnet18", drop_rate=0.2),
    "timm_convnext_atto": _timm("convnext_atto", drop_rate=0.2),
    "timm_vit_tiny": _timm_vit_seeded,
}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifiers_through_predict_compare_tta_ensemble_and_mc_dropout(name):
    """Each network as it comes through every entry point, against torch computed by hand: the plain
    model's NLL and accuracy, the ensemble's mixture, TTA's mean over the flips; MC dropout (after
    add_dropout where the network has none) caches its tail and differs between samples."""
    import copy

    import torch.nn.functional as F

    make = CLASSIFIERS[name]
    net, other = make(0), make(1)
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    mc_net = copy.deepcopy(net)
    if not any(isinstance(m, nn.Dropout) and m.p > 0 for m in mc_net.modules()) and not name.startswith("timm"):
        _quiet_add_dropout(mc_net, 0.3)
    mc = netuq.MCDropout(mc_net, samples=3, seed=0, keep_samples=True)
    tta = netuq.TTA(net, netuq.tta.flips())
    ens = netuq.Ensemble([net, other])
    res = netuq.compare({"plain": net, "tta": tta, "ensemble": ens, "mc": mc}, [(x, y)], calibrators=("none",),
                        repeats=1)  # fmt: skip
    with torch.no_grad():
        z = net(x)
        mix = (net(x).softmax(1) + other(x).softmax(1)) / 2
        flipped = torch.stack([net(x.flip(d) if d else x).softmax(1) for d in ((), (-2,), (-1,), (-2, -1))]).mean(0)
    plain = res["methods"]["plain"]["metrics"]
    assert plain["nll"] == pytest.approx(float(F.cross_entropy(z.double(), y)), rel=1e-5)
    assert plain["accuracy"] == pytest.approx(float((z.argmax(1) == y).double().mean()))
    torch.testing.assert_close(netuq.predict(ens, [x])[0].probs, mix, atol=1e-6, rtol=0)
    torch.testing.assert_close(netuq.predict(tta, [x])[0].probs, flipped, atol=1e-6, rtol=0)
    pred = mc(x)
    assert mc.caches_trunk and mc.tail is not None  # the dropout is a tail of each of these networks
    assert float(pred.samples.std(0).max()) > 0
    assert set(res["methods"]) == {"plain", "tta", "ensemble", "mc"}


# ----------------------------------------------------------------------------------- torchvision
def test_torchvision_resnet18_readme_recipe_caches_the_tail_bit_identically():
    torch.manual_seed(0)
    resnet = tv.models.resnet18(weights=None, num_classes=5).eval()
    ref = resnet(_images())
    said = _quiet_add_dropout(resnet, 0.2)
    assert any("inserted before 'fc' (Linear)" in m for m in said)  # says where it went
    assert torch.equal(resnet(_images()), ref)  # eval mode: unchanged
    x = _images()
    mc = netuq.MCDropout(resnet, samples=6, seed=0, keep_samples=True)
    pred = mc(x)
    assert mc.caches_trunk and mc.tail == "fc"  # found from the model's own execution
    whole = _whole(netuq.MCDropout(resnet, samples=6, seed=0, keep_samples=True))(x)
    assert torch.equal(pred.samples, whole.samples)  # identical to sampling the whole network
    assert float(pred.samples.std(0).max()) > 0
    loader = [(x, torch.tensor([0, 1]))]
    p, y = netuq.predict(mc, loader)
    assert p.probs.shape == (2, 5) and y.tolist() == [0, 1]


def test_torchvision_mobilenet_before_classifier_never_drops_the_logits():
    """Issue 22 item 2: before=<an nn.Sequential> put dropout after the Sequential's last step."""
    torch.manual_seed(0)
    net = tv.models.mobilenet_v3_small(weights=None, num_classes=6).eval()
    for m in net.modules():  # its own dropout off: only add_dropout's layer samples
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    _quiet_add_dropout(net, 0.5, before="classifier")
    assert isinstance(net.classifier[0].mc_dropout, netuq.nn.MCDropout)
    assert len(net.classifier) == 4  # nothing appended to the Sequential
    x = _images(4)
    with torch.no_grad(), netuq.nn.mc_sampling():
        logits = torch.stack([net(x) for _ in range(5)])
    assert not bool((logits == 0).any())
    assert float(logits.std(0).max()) > 0  # still stochastic (its input is dropped)
    mc = netuq.MCDropout(net, samples=4, seed=0)
    mc(x)
    assert mc.tail == "classifier"


def test_torchvision_deeplab_dict_output_everywhere():
    torch.manual_seed(0)
    seg = tv.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=True
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    y = torch.randint(0, 3, (1, 64, 64))
    p, _ = netuq.predict(seg, [(x, y)])
    with torch.no_grad():
        out = seg(x)
    assert p.probs.shape == (1, 3, 64, 64)
    torch.testing.assert_close(p.probs, out["out"].softmax(1))  # "out", not "aux"
    aux, _ = netuq.predict(seg, [(x, y)], output="aux")
    torch.testing.assert_close(aux.probs, out["aux"].softmax(1))
    tta = netuq.TTA(seg, netuq.tta.flips(), task="segmentation")
    assert tta(x).probs.shape == (1, 3, 64, 64)
    said = _quiet_add_dropout(seg, 0.2)
    assert any("inserted before 'classifier.4' (Conv2d)" in m for m in said)  # through F.interpolate
    with torch.no_grad():
        seg.classifier[2].bias.fill_(1.0)  # random init leaves the head's features ~1e-10: make them count
    pred = netuq.MCDropout(seg, samples=3, seed=0)(x)
    assert pred.probs.shape == (1, 3, 64, 64) and float(pred.epistemic.max()) > 0


# ------------------------------------------------------------------------------------------ timm
def test_timm_resnet_head_dropout_is_a_cached_tail_and_a_declared_trunk_agrees():
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=4, drop_rate=0.3).eval()
    x = _images()
    auto = netuq.MCDropout(net, samples=5, seed=1, keep_samples=True)
    a = auto(x)
    assert auto.tail == "forward_head"  # timm's F.dropout in forward_head: the method is the head
    declared = netuq.MCDropout(net, samples=5, seed=1, keep_samples=True, trunk="forward_features",
                               head="forward_head")  # fmt: skip
    b = declared(x)
    whole = _whole(netuq.MCDropout(net, samples=5, seed=1, keep_samples=True))(x)
    assert torch.equal(a.samples, whole.samples) and torch.equal(b.samples, whole.samples)


def test_timm_convnext_declared_trunk_accepts_p0_dropout_and_drop_path_is_sampled():
    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", pretrained=False, num_classes=4, drop_rate=0.2).eval()
    x = _images()
    # forward_features holds nn.Dropout(p=0.0) modules: a dropout that cannot drop is not stochastic
    mc = netuq.MCDropout(net, samples=4, seed=0, trunk="forward_features", head="forward_head")
    assert float(mc(x).epistemic.max()) > 0
    torch.manual_seed(0)
    deep = timm.create_model("convnext_atto", pretrained=False, num_classes=4, drop_path_rate=0.3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sampled: no identical-samples warning
        pred = netuq.MCDropout(deep, samples=4, seed=0, keep_samples=True)(x)
    assert float(pred.samples.std(0).max()) > 0


@pytest.mark.parametrize("kw", [{"attn_drop_rate": 0.3}, {"drop_path_rate": 0.3}, {"drop_rate": 0.3}])
def test_timm_vit_samples_what_was_configured(kw):
    net = _timm_vit(**kw)
    x = _images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mc = netuq.MCDropout(net, samples=4, seed=0, keep_samples=True)
        pred = mc(x)
    assert float(pred.samples.std(0).max()) > 1e-6
    again = netuq.MCDropout(net, samples=4, seed=0, keep_samples=True)(x)
    assert torch.equal(again.samples, pred.samples)  # seeded: reproducible
    assert not net.training and not any(m.training for m in net.modules())  # modes restored
    if "drop_rate" in kw:  # head dropout only: the head is cached, samples identical to the whole model
        assert mc.tail == "forward_head"
        whole = _whole(netuq.MCDropout(net, samples=4, seed=0, keep_samples=True))(x)
        assert torch.equal(whole.samples, pred.samples)


def test_timm_vit_without_any_rate_warns_identical_samples():
    net = _timm_vit()
    with pytest.warns(UserWarning, match="all 3 samples of this batch are identical .* all have p = 0"):
        pred = netuq.MCDropout(net, samples=3)(_images())
    assert float(pred.epistemic.max()) == 0


# ---------------------------------------------------------------------------------- Hugging Face
def test_hf_vit_through_predict_compare_tta_mcdropout():
    net = _hf_vit(hidden_dropout_prob=0.1)
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        ref = net(x).logits.softmax(1)
    p, _ = netuq.predict(net, [(x, y)])
    torch.testing.assert_close(p.probs, ref)
    mc = netuq.MCDropout(net, samples=4, seed=0)
    tta = netuq.TTA(net, netuq.tta.flips())
    res = netuq.compare({"plain": net, "mc": mc, "tta": tta}, [(x, y)], calibrators=("none",), repeats=1)
    assert set(res["methods"]) == {"plain", "mc", "tta"}
    assert float(mc(x).epistemic.max()) > 0
    assert tta(x).probs.shape == (4, 4)


def test_hf_vit_attention_dropout_is_sampled_and_zero_config_warns():
    attn = _hf_vit(attention_probs_dropout_prob=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = netuq.MCDropout(attn, samples=4, seed=0, keep_samples=True)(_images())
    assert float(pred.samples.std(0).max()) > 1e-6
    zero = _hf_vit()  # every p = 0 (the ViT defaults)
    with pytest.warns(UserWarning, match="samples of this batch are identical"):
        netuq.MCDropout(zero, samples=3)(_images())


def test_hf_errors_quote_the_users_batch_and_ambiguous_outputs_are_refused():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.drop = nn.Dropout(0.2)

        def forward(self, x):
            z = self.fc(self.drop(x))
            return {"logits": z, "out": z}

    with pytest.raises(TypeError, match=r"both 'logits' and 'out' are present; pass output="):
        netuq.predict(Both(), [torch.randn(2, 4)])
    p, _ = netuq.predict(Both(), [torch.randn(2, 4)], output="logits")
    assert p.probs.shape == (2, 3)

    class Pooled(nn.Module):  # returns one row for the whole (stacked) batch
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.2)

        def forward(self, x):
            return transformers.modeling_outputs.ImageClassifierOutput(logits=self.drop(x).mean(0, keepdim=True))

    with pytest.raises(ValueError, match=r"for the batch of N = 32 inputs"):
        netuq.MCDropout(Pooled(), samples=4)(torch.randn(32, 5))
    with pytest.raises(ValueError, match=r"for the batch of N = 32 inputs"):
        netuq.TTA(lambda v: Pooled()(v.flatten(1)), netuq.tta.flips())(torch.randn(32, 1, 2, 2))


def test_hf_ensemble_train_ensemble_and_fit_read_logits():
    torch.manual_seed(0)
    x = torch.randn(12, 3, 32, 32)
    y = torch.arange(12) % 4
    ens = netuq.Ensemble([_hf_vit(), _hf_vit()])
    assert ens(x[:2]).probs.shape == (2, 4)
    trained = netuq.train_ensemble(_hf_vit, (x, y), members=2, epochs=1, batch_size=6, split="full")
    assert trained(x[:3]).probs.shape == (3, 4)
    hist = netuq.training.fit(_hf_vit(), (x, y), epochs=1, batch_size=6)
    assert hist.epochs_run == 1


# ------------------------------------------------------------------------ segmentation-models-pytorch
def test_smp_unet_add_dropout_goes_before_the_segmentation_head():
    torch.manual_seed(0)
    unet = smp.Unet("resnet18", encoder_weights=None, classes=3).eval()
    said = _quiet_add_dropout(unet, 0.2)
    # not before a residual shortcut (encoder.layer4.0.downsample.0), as the old registration-order rule did
    assert any("inserted before 'segmentation_head.0' (Conv2d)" in m for m in said)
    x = torch.randn(1, 3, 64, 64)
    mc = netuq.MCDropout(unet, samples=3, seed=0, keep_samples=True, max_batch=1)
    pred = mc(x)
    assert mc.tail == "segmentation_head.0"  # the decoder runs once, the 3x3 head three times
    # one sample per forward: bit-identical to sampling the whole network (as a hand-written loop would)
    whole = _whole(netuq.MCDropout(unet, samples=3, seed=0, keep_samples=True, max_batch=1))(x)
    assert torch.equal(pred.samples, whole.samples)
    # samples stacked along the batch: this U-Net's convolutions round differently for 1 and 3 rows
    # (~1e-5 here), so the whole-network stack differs from the cached tail by rounding only
    stacked = netuq.MCDropout(unet, samples=3, seed=0, keep_samples=True)(x)
    torch.testing.assert_close(stacked.samples, pred.samples, atol=1e-4, rtol=0)
    p, _ = netuq.predict(netuq.TTA(unet, netuq.tta.flips(), task="segmentation"), [x])
    assert p.probs.shape == (1, 3, 64, 64)


def test_readme_pretrained_recipe(tmp_path):
    """The README's "Pretrained networks as they come" block, run as written except for the weights:
    random ones (weights=None, pretrained=False) and a tiny Hugging Face model saved to a folder."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("test_pretrained_models.py::test_readme_pretrained_recipe")
    block = readme[readme.index("```python\n", start) + len("```python\n") : readme.index("```\n", start + 40)]
    offline = {'weights="DEFAULT"': "weights=None", "pretrained=True": "pretrained=False"}
    for old, new in offline.items():
        assert old in block
        block = block.replace(old, new)
    _hf_vit().save_pretrained(tmp_path)
    g = torch.Generator().manual_seed(0)
    namespace = {
        "netuq": netuq,
        "name": str(tmp_path),
        "test_loader": [(torch.randn(4, 3, 224, 224, generator=g), torch.tensor([0, 1, 2, 3]))],
        "hf_loader": [(_images(3), torch.tensor([0, 1, 2]))],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # add_dropout says where; calibration on 4 random images warns
        exec(compile(block, "README.md", "exec"), namespace)
    assert set(namespace["results"]["methods"]) == {"ResNet-18", "ViT-Tiny"}
    assert namespace["pred"].probs.shape == (3, 4) and namespace["labels"].tolist() == [0, 1, 2]
    assert float(namespace["pred"].epistemic.max()) > 0
    assert isinstance(namespace["resnet"].fc.mc_dropout, netuq.nn.MCDropout)
