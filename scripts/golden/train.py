#!/usr/bin/env python3
"""train.py: golden files for qie-train (stages/train, tests/test_train.c, tests/t_train.sh).

The reference objective and optimizer step written in PyTorch, following VideoX-Fun
scripts/qwenimage/train_edit.py as spec/trainer_behaviour.md quotes it (posterior sample, latent
normalisation, 2x2 packing, FlowMatchEulerDiscreteScheduler sigmas with dynamic shift,
x_sigma = (1 - sigma) x0 + sigma eps, v = eps - x0, custom_mse_loss with the |e| <= 50 mask,
compute_loss_weighting_for_sd3, the plain-backend clipping rule, torch.optim.AdamW, diffusers
get_scheduler), with qie's decisions (spec/decisions.md): fp32 master weights and fp32 AdamW
states, the epoch-end partial accumulation step averaged over the micro-batches it has, data order
mt19937(seed + epoch) randperm with bucketed batches and tail drop. Everything runs in fp32 on
the CPU, the precision of qie's CPU backend.

Writes tests/golden/train/:
  model/transformer/      a tiny QwenImageTransformer2DModel (save_pretrained, f32): 2 layers,
                          2 heads x 8, axes 2/2/4, J 16, in 64 / out 16 (the real latent packing)
  recs_a.qie, recs_b.qie  the training records as a qie record stream (docs/record.md framing):
                          target_mean/logvar [16,1,h,w] f32, source_mean.0/logvar.0, prompt_embeds
                          and prompt_embeds_empty bf16 [L, 16]
  draws_a/b.safetensors   every random draw the runs made (names: stages/train/train.h, draws.c)
  expect_a.safetensors    run A (batch 2, one step, all parameters, clipping active): loss [1],
                          grad.<name> (before clipping), weight.<name> after the step
  expect_b.safetensors    run B (batch 1, accumulation 2 over 3 records: partial groups at each
                          epoch end, 10 steps, linear warmup schedule, two lr groups and a frozen
                          tensor, cosmap weighting, caption dropout, decaying + abnormal-norm
                          clipping): loss [10], weight.<name> after step 10
  misc.safetensors        perm.<seed>.<n> (torch.randperm), sigmas.<L> (scheduler grid, T=1000)
The flags of each run are in the metadata ("flags") so the C test passes the same ones.

With QIE_BIN=<build>/bin set (qie-train built), the script also runs qie-train on run B and
checks, at fixture time, that diffusers loads checkpoint-N/transformer with from_pretrained
(weights equal to bf16 of qie's fp32 master) and that the TensorBoard event file reads back with
the tensorboard package (EventFileLoader), recording the results in expect_b's metadata.

Run from the repository root: python3 scripts/golden/train.py (torch, diffusers, safetensors,
numpy; tensorboard optional).
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import diffusers
import msgpack
import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_loss_weighting_for_sd3
from safetensors.torch import load_file, save_file

OUT = "tests/golden/train"
T = 1000
SCHED = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
             shift=1.0, shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)
LAT_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
            -0.1922, -0.9497, 0.2503, -0.2921]
LAT_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
           1.1253, 2.8251, 1.9160]
J = 16

RUNS = {
    # one step, batch 2 (two records of one bucket, text lengths 5 and 3, one dropped caption)
    "a": dict(records=[(0, (8, 6), [(4, 4)], 5, 4), (1, (8, 6), [(4, 4)], 3, 4)],
              flags=dict(train_batch_size=2, gradient_accumulation_steps=1, max_train_steps=1, learning_rate=1e-3,
                         adam_weight_decay=3e-2, adam_epsilon=1e-8, adam_beta1=0.9, adam_beta2=0.999,
                         max_grad_norm=0.02, initial_grad_norm_ratio=5, abnormal_norm_clip_start=1000,
                         lr_scheduler="constant", lr_warmup_steps=0, weighting_scheme="none",
                         text_drop_ratio=0.5, seed=7),
              trainable=["."], low=[]),
    # ten steps, batch 1, accumulation 2 over 3 records -> groups of 2 and 1 per epoch
    "b": dict(records=[(0, (8, 6), [(4, 4)], 5, 4), (1, (6, 8), [(4, 2)], 3, 4), (2, (8, 6), [(2, 4)], 4, 4)],
              flags=dict(train_batch_size=1, gradient_accumulation_steps=2, max_train_steps=10, learning_rate=2e-3,
                         adam_weight_decay=1e-2, adam_epsilon=1e-8, adam_beta1=0.9, adam_beta2=0.99,
                         max_grad_norm=0.05, initial_grad_norm_ratio=5, abnormal_norm_clip_start=4,
                         lr_scheduler="linear", lr_warmup_steps=2, weighting_scheme="cosmap",
                         text_drop_ratio=0.3, seed=11),
              trainable=["transformer_blocks"], low=["img_in", "txt_in", "time_text_embed", "norm_out", "proj_out"]),
}


# ---- model and data -------------------------------------------------------------------------

def build_model(seed):
    torch.manual_seed(seed)
    m = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=8,
                                    num_attention_heads=2, joint_attention_dim=J, axes_dims_rope=(2, 2, 4))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight") or ".norm_" in n:  # RMSNorm gains off 1, so their gradients matter
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return m.float()


def bf16r(x):
    return x.to(torch.bfloat16).float()


def make_records(name, specs, seed):
    g = torch.Generator().manual_seed(seed)
    recs = []
    for index, (h, w), sources, L, Le in specs:
        r = dict(id=f"{name}{index:03d}", index=index, bucket=[8 * h, 8 * w], h=h, w=w, sources=sources, L=L, Le=Le)
        r["mean"] = torch.randn(16, 1, h, w, generator=g) * 2.0
        r["logvar"] = torch.rand(16, 1, h, w, generator=g) * 4.0 - 6.0
        r["smean"] = [torch.randn(16, 1, sh, sw, generator=g) * 2.0 for sh, sw in sources]
        r["slogvar"] = [torch.rand(16, 1, sh, sw, generator=g) * 4.0 - 6.0 for sh, sw in sources]
        r["txt"] = bf16r(torch.randn(L, J, generator=g))
        r["txt_empty"] = bf16r(torch.randn(Le, J, generator=g))
        recs.append(r)
    return recs


def tensor_entry(t, dtype):
    if dtype == "bf16":
        raw = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    else:
        raw = t.float().contiguous().numpy().tobytes()
    return {"dtype": dtype, "shape": list(t.shape), "data": raw}


def write_stream(path, recs):
    with open(path, "wb") as f:
        for r in recs:
            tensors = {"target_mean": tensor_entry(r["mean"], "f32"), "target_logvar": tensor_entry(r["logvar"], "f32"),
                       "prompt_embeds": tensor_entry(r["txt"], "bf16"),
                       "prompt_embeds_empty": tensor_entry(r["txt_empty"], "bf16")}
            for k in range(len(r["sources"])):
                tensors[f"source_mean.{k}"] = tensor_entry(r["smean"][k], "f32")
                tensors[f"source_logvar.{k}"] = tensor_entry(r["slogvar"][k], "f32")
            rec = {"v": 1, "id": r["id"], "index": r["index"], "text": "golden", "type": "image", "bucket": r["bucket"],
                   "target": f"{r['id']}.png", "sources": [f"{r['id']}-s{k}.png" for k in range(len(r["sources"]))],
                   "tensors": tensors}
            b = msgpack.packb(rec, use_bin_type=True)
            f.write(b"QIEF" + struct.pack("<IQ", 1, len(b)) + b)
        f.write(b"QIEF" + struct.pack("<IQ", 2, 8) + struct.pack("<Q", len(recs)))


# ---- the reference objective ----------------------------------------------------------------

def pack(z):  # [B, C, 1, h, w] -> [B, (h/2)(w/2), 4C]  (diffusers _pack_latents)
    b, c, _, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def calculate_shift(n, base_seq=256, max_seq=8192, base_shift=0.5, max_shift=0.9):
    m = (max_shift - base_shift) / (max_seq - base_seq)
    return n * m + (base_shift - m * base_seq)


def sigma_grid(scheduler, n_tgt):
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / T, T), mu=calculate_shift(n_tgt))
    return scheduler.timesteps.clone(), scheduler.sigmas.clone()


def linear_decay(initial_value, final_value, total_steps, current_step):
    if current_step >= total_steps:
        return final_value
    current_step = max(0, current_step)
    step_size = (final_value - initial_value) / total_steps
    return initial_value + step_size * current_step


def randperm(n, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def epoch_batches(recs, B, seed, epoch):
    """qie's sampler: randperm(seed + epoch), buckets by (h, w, nsources), tail drop."""
    keys, order = {}, []
    for r in recs:
        keys.setdefault((r["h"], r["w"], len(r["sources"])), len(keys))
    buckets, batches = {}, []
    for i in randperm(len(recs), seed + epoch):
        k = keys[(recs[i]["h"], recs[i]["w"], len(recs[i]["sources"]))]
        buckets.setdefault(k, []).append(i)
        if len(buckets[k]) == B:
            batches.append(buckets.pop(k))
    return batches


def micro_loss(model, scheduler, recs, items, m, f, g, draws):
    mean_c = torch.tensor(LAT_MEAN).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(LAT_STD).view(1, 16, 1, 1, 1)
    B = len(items)
    r0 = recs[items[0]]
    h, w = r0["h"], r0["w"]
    N = (h // 2) * (w // 2)
    # draws in the reference's order: VAE posterior samples, then eps, then the index
    post_t = torch.randn(B, 16, 1, h, w, generator=g)
    post_s = [torch.randn(B, 16, 1, sh, sw, generator=g) for sh, sw in r0["sources"]]
    noise = torch.randn(B, N, 64, generator=g)
    idx = torch.randint(0, T, (B,), generator=g)
    drop = (torch.rand(B, generator=g) < f["text_drop_ratio"]).long()
    draws[f"post.target.{m}"] = post_t
    for k, p in enumerate(post_s):
        draws[f"post.source.{k}.{m}"] = p
    draws[f"noise.{m}"] = noise
    draws[f"sigma_index.{m}"] = idx
    draws[f"text_drop.{m}"] = drop

    def sample(mean, logvar, eps):  # DiagonalGaussianDistribution.sample, then the trainer's normalisation
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        return ((mean + std * eps) - mean_c) * inv_std

    latents = sample(torch.stack([recs[i]["mean"] for i in items]), torch.stack([recs[i]["logvar"] for i in items]), post_t)
    latents = pack(latents)
    src = []
    for k in range(len(r0["sources"])):
        s = sample(torch.stack([recs[i]["smean"][k] for i in items]), torch.stack([recs[i]["slogvar"][k] for i in items]),
                   post_s[k])
        src.append(pack(s))
    timesteps_all, sigmas_all = sigma_grid(scheduler, N)
    timesteps = timesteps_all[idx]
    step_indices = [(timesteps_all == t).nonzero().item() for t in timesteps]
    sigmas = sigmas_all[step_indices].flatten().view(B, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    target = noise - latents
    hidden = torch.cat([noisy] + src, dim=1) if src else noisy
    txts = [recs[i]["txt_empty"] if drop[b] else recs[i]["txt"] for b, i in enumerate(items)]
    Lmax = max(t.shape[0] for t in txts)
    enc = torch.stack([torch.cat([t, t.new_zeros(Lmax - t.shape[0], J)]) for t in txts])
    mask = torch.stack([torch.cat([torch.ones(t.shape[0]), torch.zeros(Lmax - t.shape[0])]) for t in txts])
    img_shapes = [[(1, h // 2, w // 2)] + [(1, sh // 2, sw // 2) for sh, sw in r0["sources"]]] * B
    pred = model(hidden_states=hidden, timestep=timesteps / 1000, encoder_hidden_states=enc,
                 encoder_hidden_states_mask=mask, img_shapes=img_shapes, return_dict=False)[0][:, :N]
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=f["weighting_scheme"], sigmas=sigmas)
    diff = pred.float() - target.float()
    mse = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
    loss = (mse * (diff.abs() <= 50).float() * weighting.float()).mean()
    return loss


def run(name, cfg, model_seed):
    f = cfg["flags"]
    model = build_model(model_seed)
    recs = make_records(name, cfg["records"], model_seed + 1)
    names = [n for n, _ in model.named_parameters()]
    g0 = [p for n, p in model.named_parameters() if any(s in n for s in cfg["trainable"])]
    g1 = [p for n, p in model.named_parameters()
          if not any(s in n for s in cfg["trainable"]) and any(s in n for s in cfg["low"])]
    trainable = set(map(id, g0 + g1))
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    groups = [{"params": g0, "lr": f["learning_rate"]}] + ([{"params": g1, "lr": f["learning_rate"] / 2}] if g1 else [])
    opt = torch.optim.AdamW(groups, lr=f["learning_rate"], betas=(f["adam_beta1"], f["adam_beta2"]),
                            weight_decay=f["adam_weight_decay"], eps=f["adam_epsilon"], foreach=False)
    M = f["max_train_steps"]
    lr_sched = get_scheduler(f["lr_scheduler"], optimizer=opt, num_warmup_steps=f["lr_warmup_steps"],
                             num_training_steps=M)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHED)
    g = torch.Generator().manual_seed(1000 + model_seed)
    B, GA = f["train_batch_size"], f["gradient_accumulation_steps"]
    epoch, pos, micro, step = 0, 0, 0, 0
    batches = epoch_batches(recs, B, f["seed"], 0)
    draws, losses, grads0 = {}, [], None
    tparams = g0 + g1
    while step < M:
        if pos >= len(batches):
            epoch, pos = epoch + 1, 0
            batches = epoch_batches(recs, B, f["seed"], epoch)
        k = min(GA, len(batches) - pos)
        step_loss = 0.0
        for j in range(k):
            loss = micro_loss(model, scheduler, recs, batches[pos + j], micro, f, g, draws)
            (loss / k).backward()
            step_loss += loss.item() / k
            micro += 1
        pos += k
        # parameters the loss does not reach (the last block's text-output path, model.md 1.11)
        # get a zero gradient, as in the flat fp32 buffers of DeepSpeed/FSDP and qie: AdamW then
        # still decays them (plain torch would skip a None gradient)
        for p in tparams:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if grads0 is None:
            grads0 = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                      for n, p in model.named_parameters()}
        total = torch.norm(torch.stack([torch.norm(p.grad.detach(), 2) for p in tparams]), 2)
        thr = linear_decay(f["max_grad_norm"] * f["initial_grad_norm_ratio"], f["max_grad_norm"],
                           f["abnormal_norm_clip_start"], step)
        if total / thr > 5 and step > f["abnormal_norm_clip_start"]:
            thr = thr / min((total / thr).item(), 10)
        torch.nn.utils.clip_grad_norm_(tparams, thr)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=False)
        step += 1
        losses.append(step_loss)
        print(f"  {name} step {step}: loss {step_loss:.6f} grad norm {total.item():.5g} threshold {thr:.5g}")
    return model, recs, draws, losses, grads0, names


def main():
    os.makedirs(OUT, exist_ok=True)
    model_dir = os.path.join(OUT, "model", "transformer")
    shutil.rmtree(os.path.join(OUT, "model"), ignore_errors=True)
    os.makedirs(model_dir)
    build_model(1234).save_pretrained(model_dir)
    meta_common = {"format": "pt", "torch": torch.__version__, "diffusers": diffusers.__version__,
                   "numpy": np.__version__}
    results = {}
    for name, cfg in RUNS.items():
        model, recs, draws, losses, grads0, names = run(name, cfg, 1234)
        write_stream(os.path.join(OUT, f"recs_{name}.qie"), recs)
        save_file({k: v.contiguous() for k, v in draws.items()}, os.path.join(OUT, f"draws_{name}.safetensors"),
                  metadata=meta_common)
        exp = {"loss": torch.tensor(losses, dtype=torch.float32)}
        sd = dict(model.named_parameters())
        for n in names:
            exp["weight." + n] = sd[n].detach().clone()
            if name == "a":
                exp["grad." + n] = grads0[n]
        meta = dict(meta_common, flags=json.dumps(dict(cfg["flags"], trainable_modules=cfg["trainable"],
                                                       trainable_modules_low_learning_rate=cfg["low"])))
        results[name] = (exp, meta)
    # randperm and sigma-grid checks
    misc = {}
    for seed, n in [(0, 10), (42, 1000), (11, 3), (123456789, 4097)]:
        misc[f"perm.{seed}.{n}"] = torch.tensor(randperm(n, seed), dtype=torch.int64)
    sch = FlowMatchEulerDiscreteScheduler(**SCHED)
    for L in (12, 4096, 6889):
        ts, sg = sigma_grid(sch, L)
        misc[f"sigmas.{L}"] = sg[:T].float().contiguous()
        misc[f"timesteps.{L}"] = ts.float().contiguous()
    save_file(misc, os.path.join(OUT, "misc.safetensors"), metadata=meta_common)
    # fixture-time checks of qie-train's outputs, when it is built
    qbin = os.environ.get("QIE_BIN")
    if qbin:
        exp, meta = results["b"]
        meta.update(check_qie_outputs(qbin, json.loads(meta["flags"])))
    for name, (exp, meta) in results.items():
        save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, f"expect_{name}.safetensors"),
                  metadata=meta)
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(OUT) for fn in fns)
    print(f"wrote {OUT} ({total} bytes)")


def check_qie_outputs(qbin, flags):
    """Runs qie-train on run B and checks its checkpoint with diffusers and its event file with
    tensorboard. Returns metadata entries."""
    out = tempfile.mkdtemp(prefix="qie-golden-train-")
    args = [os.path.join(qbin, "qie-train"), "--pretrained_model_name_or_path", os.path.join(OUT, "model"),
            "--in", os.path.join(OUT, "recs_b.qie"), "--draws", os.path.join(OUT, "draws_b.safetensors"),
            "--output_dir", out, "--checkpointing_steps", "5", "--max_shard_size", "40KB", "--log_level", "warn"]
    for k, v in flags.items():
        if isinstance(v, list):
            args += ["--" + k] + v
        else:
            args += ["--" + k, str(v)]
    subprocess.run(args, check=True)
    res = {}
    ck = os.path.join(out, "checkpoint-10", "transformer")
    m = QwenImageTransformer2DModel.from_pretrained(ck, torch_dtype=torch.float32)
    master = {}
    for fn in os.listdir(os.path.join(out, "checkpoint-10", "optimizer")):
        if fn.endswith(".safetensors"):
            master.update({k[len("master."):]: v for k, v in load_file(os.path.join(out, "checkpoint-10", "optimizer", fn)).items()
                           if k.startswith("master.")})
    worst = max((p.detach() - bf16r(master[n])).abs().max().item() for n, p in m.named_parameters())
    nshards = len([f for f in os.listdir(ck) if f.endswith(".safetensors")])
    res["diffusers_load_check"] = f"ok: from_pretrained loaded {ck} ({nshards} shards); max |w - bf16(master)| = {worst}"
    assert worst == 0.0, res["diffusers_load_check"]
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        tdir = os.path.join(out, "logs", "text2image-fine-tune")
        ev = [f for f in os.listdir(tdir) if "tfevents" in f][0]
        vals = {}
        n = 0
        for e in EventFileLoader(os.path.join(tdir, ev)).Load():
            n += 1
            for v in e.summary.value:
                vals.setdefault(v.tag, []).append((e.step, v.simple_value if v.HasField("simple_value") else None))
        steps = [s for s, _ in vals["train_loss"]]
        assert steps == list(range(1, 11)), steps
        res["tensorboard_check"] = f"ok: {n} events, tags {sorted(vals)}, train_loss at steps 1..10"
    except ImportError:
        res["tensorboard_check"] = "skipped: tensorboard not installed"
    print("  " + res["diffusers_load_check"])
    print("  " + res["tensorboard_check"])
    shutil.rmtree(out)
    return res


if __name__ == "__main__":
    sys.exit(main())
