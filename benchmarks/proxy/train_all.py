"""Train both proxy models end to end, in one process (VAE -> DiT, then VAE -> UNet).

    cd /work/main && setsid nohup nice -n 10 python benchmarks/proxy/train_all.py > benchmarks/proxy/train.log 2>&1 &

Weights land in lightcache/proxy/weights/{wan_proxy,unet_proxy}/ as pipeline folders, rewritten at every
checkpoint whose validation loss improves, so an interrupted run leaves its best weights behind. Settings, losses
and wall times go to benchmarks/proxy/train_summary.json. ``--smoke`` runs a few steps of everything into
/tmp to check the path end to end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import train_unet
import train_wan
from common import log, record_run, set_threads, write_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_wan.add_args(ap)
    train_unet.add_args(ap)
    ap.add_argument("--work", default="/tmp/lightcache_proxy_work", help="intermediate checkpoints")
    ap.add_argument("--summary", default=str(Path(__file__).with_name("train_summary.json")))
    ap.add_argument("--only", choices=["wan", "unet"], help="train one proxy only")
    ap.add_argument("--reuse-vaes", action="store_true", help="reuse VAEs finished by an earlier run in --work")
    ap.add_argument("--smoke", action="store_true", help="tiny step counts, outputs under /tmp/lightcache_proxy_smoke")
    args = ap.parse_args()
    if args.smoke:
        root = Path("/tmp/lightcache_proxy_smoke")
        train_wan.OUT, train_unet.OUT = root / "wan_proxy", root / "unet_proxy"
        args.work, args.summary = str(root / "work"), str(root / "summary.json")
        args.vae_steps, args.clips, args.dit_steps = 20, 160, 20
        args.kl_vae_steps, args.unet_clips, args.unet_steps = 20, 160, 20
    set_threads()
    t0 = time.time()
    record_run(Path(args.summary), args)
    if args.only in (None, "wan"):
        train_wan.main(args)
    if args.only in (None, "unet"):
        train_unet.main(args)
    total = round(time.time() - t0, 1)
    write_summary(Path(args.summary), "total_seconds", {"all": total})
    log(f"done in {total:.0f}s")
    log(json.dumps(json.loads(Path(args.summary).read_text()), indent=1))


if __name__ == "__main__":
    main()
