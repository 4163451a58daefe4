"""Load an exported nasprune folder with plain Hugging Face transformers and classify a sentence pair.

    python examples/load_export.py runs/rte/export-middle
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/rte/export-middle")
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
# trust_remote_code only spares a prompt about the model's config; the tokenizer is a stock one
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
record = json.loads((folder / "subnetwork.json").read_text())
inputs = tokenizer("A cat sat on the mat.", "There is a cat on the mat.", return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
params = sum(p.numel() for p in model.parameters())
print(f"loaded {type(model).__name__} from {folder}: {params:,} parameters "
      f"(layers {model.config.layer_heads} heads, {model.config.layer_units} FFN units)")
print(f"recorded: {record['params']} params, {record['macs']:,} MACs at {record['seq_len']} tokens")
print(f"logits for a sample pair: {logits.tolist()}")
