"""Cross-check Encore against RecBole 1.2.1 on ml-100k (not part of the product or its tests).

Set up once (PyPI only; about 5 GB with torch's CUDA wheels):
    python3 -m venv /tmp/rbenv && /tmp/rbenv/bin/pip install recbole==1.2.1 "numpy<2" torch==2.5.1

    /tmp/rbenv/bin/python scripts/recbole_crosscheck.py split SEED OUT_DIR
        RecBole's own train/valid/test split of ml-100k for SEED, as `user_id<TAB>item_id` TSVs
        (compare with `encore data split --split ratio-recbole --seed SEED`).
    RB_EPOCHS=20 /tmp/rbenv/bin/python scripts/recbole_crosscheck.py run MODEL SEED
        Train MODEL (MultiVAE, MacridVAE, Pop, BPR, ...) with PEERS.md's protocol on one torch
        thread ($RB_THREADS for more); RecBole's log has per-epoch training and evaluation times.

Data: $ENCORE_SHARED_DATA or ../shared/data beside the repository (ml-100k.inter).
"""
import os
import sys
import time
from pathlib import Path

import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import run_recbole
from recbole.utils import init_seed

DATA = os.environ.get(
    "ENCORE_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")
)
EVAL = {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "full"}


def base(seed):
    return {
        "data_path": DATA, "seed": seed, "reproducibility": True, "eval_args": EVAL,
        "load_col": {"inter": ["user_id", "item_id"]}, "device": "cpu", "use_gpu": False,
        "show_progress": False,
    }


def split(seed, out):
    config = Config(model="MultiVAE", dataset="ml-100k", config_dict=base(seed))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    parts = data_preparation(config, dataset)
    os.makedirs(out, exist_ok=True)
    for name, part in zip(("train", "valid", "test"), parts):
        ds = part._dataset
        users = ds.id2token("user_id", ds.inter_feat["user_id"].numpy())
        items = ds.id2token("item_id", ds.inter_feat["item_id"].numpy())
        with open(f"{out}/{name}.tsv", "w") as w:
            w.write("user_id\titem_id\n")
            w.writelines(f"{u}\t{i}\n" for u, i in zip(users, items))


def run(model, seed):
    torch.set_num_threads(int(os.environ.get("RB_THREADS", 1)))
    cfg = base(seed) | {
        "metrics": ["Recall", "MRR", "NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10",
        "stopping_step": 10, "epochs": int(os.environ.get("RB_EPOCHS", 300)),
    }
    start = time.time()
    r = run_recbole(model=model, dataset="ml-100k", config_dict=cfg)
    print("RESULT", model, seed, dict(r["test_result"]), "wall", round(time.time() - start, 1))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "split":
        split(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
