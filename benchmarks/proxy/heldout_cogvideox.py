"""Does the CogVideoX proxy's motion generalise to conditions it never saw? Retrain its denoiser with the
shipped recipe (train_cogvideox.train_dit, same steps, batch, LR, seed) on the clips of 40 of the 48
conditions, then score colour / motion accuracy on the 8 held out (and on 8 trained ones, same sampling).

Each held-out condition is a combination of attributes that all appear in training (the prompt embedding
is the sum of a shape, a colour and a motion embedding, lightcache.proxy.data.prompt_embeds), so a model
that learned motion as an attribute can render it; one that memorised the 48 combinations cannot.

    PROXY_THREADS=2 python benchmarks/proxy/heldout_cogvideox.py     # ~10 min on 2 CPU cores; weights in /tmp
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_cogvideox as tc  # noqa: E402
from common import evaluate_pipeline, set_threads  # noqa: E402

OUT = Path("/tmp/lightcache_cogvideox_heldout")
# every 6th condition: 8 combinations of all 3 shapes, all 4 colours and 2 of the 4 motions (left, up)
HELD_OUT = tuple(range(0, 48, 6))


def main() -> dict:
    from lightcache.proxy.data import ALL_CONDITIONS
    from lightcache.proxy.load import load_cogvideox_proxy

    set_threads()
    t0 = time.time()
    vae = load_cogvideox_proxy().vae.eval()
    z, conds = tc.encode_dataset(vae, tc.DEFAULTS["clips"])
    keep = ~torch.isin(conds, torch.tensor(HELD_OUT))
    tc.OUT = OUT  # train_dit saves its best EMA checkpoint to train_cogvideox.OUT
    OUT.mkdir(parents=True, exist_ok=True)
    info = tc.train_dit(z[keep], conds[keep], vae, tc.DEFAULTS["dit_steps"], tc.DEFAULTS["dit_batch"],
                        tc.DEFAULTS["dit_lr"])
    pipe = load_cogvideox_proxy(path=OUT)
    held = [ALL_CONDITIONS[i] for i in HELD_OUT]
    trained = [ALL_CONDITIONS[i + 3] for i in HELD_OUT]
    out = {"held_out_conditions": [str(c) for c in held], "training_clips": int(keep.sum()),
           "dropped_clips": int((~keep).sum()), "dit_steps": tc.DEFAULTS["dit_steps"],
           "best_val": info.get("best_val"), "seconds": None}
    for label, cs in (("held_out", held), ("trained", trained)):
        out[label] = [evaluate_pipeline(pipe, f"cogvideox-heldout/{label}", len(cs), steps, cfg, conds=cs, seed=1000)
                      for steps, cfg in ((20, 4.0), (50, 4.0))]
    out["seconds"] = round(time.time() - t0)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
