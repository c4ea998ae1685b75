"""Your own segmenter and DataLoaders of (image, label, anomaly mask) -> netuq.compare -> report.html.

Metrics stream batch by batch and the calibrators are fitted on a seeded, bounded pixel sample, so
memory does not grow with the test set. Run: ``python examples/segmentation.py [OUT_DIR]``.
"""

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netuq

out = sys.argv[1] if len(sys.argv) > 1 else "out-segmentation"
torch.manual_seed(0)
IGNORE = 255  # label of pixels left out (here: the unknown objects)

# Digit scenes shipped with netuq: 11 classes (background + 10 digits) and unknown objects.
scenes = netuq.data.load_digit_scenes(240, size=32, seed=0)
train = DataLoader(TensorDataset(*scenes.train), batch_size=16, shuffle=True)
val = DataLoader(TensorDataset(*scenes.val), batch_size=16)
# A third element per batch: the anomaly mask, whose pixels are scored as out-of-distribution.
test = DataLoader(TensorDataset(*scenes.test, scenes.test_anomaly), batch_size=16)

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
    nn.Dropout2d(0.1), nn.Conv2d(16, 11, 1),
)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(8):
    for x, y in train:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y, ignore_index=IGNORE).backward()
        optimizer.step()
model.eval()

results = netuq.compare(
    {"plain": model, "MC dropout": netuq.MCDropout(model, samples=8, seed=0)},
    test,
    calibration=val,
    ignore_index=IGNORE,
)
print(netuq.report.render_report(results, out))
