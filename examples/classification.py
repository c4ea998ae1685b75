"""Your own classifier and DataLoaders -> netuq.compare -> report.html.

Run: ``python examples/classification.py [OUT_DIR]`` (about a minute on a laptop CPU).
"""

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netuq

out = sys.argv[1] if len(sys.argv) > 1 else "out-classification"
torch.manual_seed(0)

# Any data as DataLoaders of (x, y): here the 8x8 digits shipped with netuq.
digits = netuq.data.load_digits(seed=0)
train = DataLoader(TensorDataset(*digits.train), batch_size=64, shuffle=True)
val = DataLoader(TensorDataset(*digits.val), batch_size=256)
test = DataLoader(TensorDataset(*digits.test), batch_size=256)
# Inputs of no class, two kinds (the report shows each kind and all pooled).
noise = DataLoader(TensorDataset(torch.rand(200, 1, 8, 8)), batch_size=256)
blank = DataLoader(TensorDataset(torch.rand(200, 1, 1, 1).expand(200, 1, 8, 8).clone()), batch_size=256)
# The test set under a corruption, at the severities you care about.
x_test, y_test = digits.test
blurred = {s: DataLoader(TensorDataset(netuq.data.corrupt(x_test, "blur", s, seed=s), y_test), batch_size=256)
           for s in (2, 4)}

# Any model, trained your way.
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(15):
    for x, y in train:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
model.eval()

results = netuq.compare(
    {"plain": model, "MC dropout": netuq.MCDropout(model, samples=20, seed=0)},
    test,
    calibration=val,  # None: the repeated 2-fold protocol on the test set
    calibrators=("none", "temperature"),
    ood={"uniform noise": noise, "flat gray": blank},
    shifts={"blur": blurred},
    class_names=digits.class_names,
)
print(netuq.report.render_report(results, out))
