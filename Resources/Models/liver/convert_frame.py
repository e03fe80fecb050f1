"""Turn the liver model from the frame of its training surfaces (RAS) into LPS, exactly.

The shared liver surfaces are in RAS (NIfTI world coordinates), while Slicer's files and every
fit are LPS; the model was trained on them unconverted, so a real LPS liver sat half a turn about
z from it. This rewrites the decoder's first and last layers for that half-turn (a rotation the
icosphere template maps onto itself, so decoded surfaces are the old ones turned). Run once on the
bundle of commit 3c09711:

    python Resources/Models/liver/convert_frame.py Resources/Models/liver/model.pt
"""

import sys

import torch

from shapeprior.io.frames import RAS_TO_LPS
from shapeprior.models.bundle import load_bundle, save_bundle
from shapeprior.models.dals import rotated_tensors

HALF_TURN_Z = torch.diag(torch.tensor(RAS_TO_LPS))

path = sys.argv[1]
bundle = load_bundle(path, kind="dals")
if "frame_conversion" in bundle.metadata:
    sys.exit(f"{path}: already converted ({bundle.metadata['frame_conversion']})")
metadata = {**bundle.metadata, "frame_conversion": "trained on RAS surfaces; decoder turned half a turn about z "
            "into LPS by Resources/Models/liver/convert_frame.py"}
save_bundle(path, "dals", metadata, rotated_tensors(bundle, HALF_TURN_Z))
print(f"wrote {path}")
