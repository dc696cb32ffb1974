"""Run a grid of (task, model options, training options, seed) trainings in parallel
processes and append one JSON line per run: the ablations and sweeps of docs/recipe.md.

    python benchmarks/sweep.py GRID.json OUT.jsonl [--workers 2]

GRID.json: a list of jobs {"name", "task", "model", "model_options": {...},
"train": {...TrainConfig fields...}, "seeds": [...], "eval_n": 1000, "save_dir": DIR
(optional: DIR/name/task/<model>-seed<k>.npz, a reproduce checkpoint)}. Jobs already in
OUT.jsonl (same name, task, seed) are skipped, so an interrupted sweep resumes.
Every run is the library's own train() and evaluation (rssm_ref.experiments.reproduce), seeded.
"""
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

LENGTHS = (16, 32, 64, 128, 256, 512, 1024)


def run_one(job, seed):
    os.environ.setdefault("RSSM_REF_THREADS", "1")
    import numpy as onp
    from rssm_ref.experiments.reproduce import EVAL_STREAM
    from rssm_ref.training.head import ModelConfig, accuracy, param_count
    from rssm_ref.training.tasks import make_batch
    from rssm_ref.training.train import TrainConfig, train
    mcfg = ModelConfig(job["model"], job["task"], **job.get("model_options", {}))
    tcfg = TrainConfig(seed=seed, L=16, log_every=10 ** 9, **job.get("train", {}))
    ckpt = rc = None
    if job.get("save_dir"):
        # a reproduce-format checkpoint (with its run config): reproduce --resume and the
        # experiments beyond the paper can evaluate it without training again
        from rssm_ref.experiments.reproduce import ReproduceConfig, run_config
        folder = os.path.join(job["save_dir"], job["name"], job["task"])
        os.makedirs(folder, exist_ok=True)
        rc = run_config(ReproduceConfig(task=job["task"]), mcfg, tcfg)
        ckpt = os.path.join(folder, f"{job['model']}-seed{seed}.npz")
    t0 = time.perf_counter()
    params, hist = train(mcfg, tcfg, checkpoint=ckpt, resume=ckpt is not None, run_config=rc)
    train_s = time.perf_counter() - t0
    accs = []
    for L in job.get("lengths", LENGTHS):
        rng = onp.random.default_rng([seed, EVAL_STREAM, L])
        tok, tgt = make_batch(job["task"], rng, job.get("eval_n", 1000), L, mcfg.n_tokens)
        accs.append(100.0 * accuracy(mcfg, params, tok, tgt))
    loss = hist["loss"]
    return {"name": job["name"], "task": job["task"], "model": job["model"], "seed": seed,
            "model_options": job.get("model_options", {}), "train": job.get("train", {}),
            "lengths": list(job.get("lengths", LENGTHS)), "accuracy": accs,
            "final_loss_mean_last500": float(onp.mean(loss[-500:])),
            "loss_curve_every_500": [float(onp.mean(loss[i:i + 500])) for i in range(0, len(loss), 500)],
            "total_steps": tcfg.total_steps, "param_count": param_count(mcfg)["total"],
            "train_seconds": round(train_s, 2), "seconds_per_step": train_s / tcfg.total_steps}


def main(argv):
    grid_path, out_path = argv[0], argv[1]
    workers = int(argv[argv.index("--workers") + 1]) if "--workers" in argv else 2
    jobs = json.load(open(grid_path))
    done = set()
    if os.path.exists(out_path):
        for line in open(out_path):
            r = json.loads(line)
            done.add((r["name"], r["task"], r["seed"]))
    todo = [(j, s) for j in jobs for s in j["seeds"] if (j["name"], j["task"], s) not in done]
    print(f"{len(todo)} runs to do ({len(done)} already in {out_path})", flush=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futs = {pool.submit(run_one, j, s): (j["name"], j["task"], s) for j, s in todo}
        for f in as_completed(futs):
            r = f.result()
            with open(out_path, "a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"{r['name']:<28} {r['task']:<9} seed {r['seed']}: "
                  + " ".join(f"{a:5.1f}" for a in r["accuracy"])
                  + f"  loss {r['final_loss_mean_last500']:.4f}  {r['train_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
