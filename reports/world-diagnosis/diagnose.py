"""Diagnosis of the shipped world:ip2p (issue 21 item 1)."""
import json, sys, time, torch
import ip2p
from ip2p.data.registry import open_dataset
from ip2p.protocol import EditRequest
from ip2p.models import load_vae
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
src = sys.argv[1] if len(sys.argv) > 1 else "world:ip2p"
N = 192
def items(split):
    return list(open_dataset(f"world:{split}", n=N))
ed = ip2p.load_editor(src, resize=None)
def run(its, instr=None, sI=1.5, sT=7.5, steps=20):
    outs = []
    for s in range(0, len(its), 32):
        reqs = [EditRequest(image=e.load_input(), instruction=(instr[i] if instr else e.instruction), input_caption=e.input_caption,
                output_caption=e.output_caption, seed=i, item_id=e.item_id,
                knobs={"image_guidance_scale": sI, "guidance_scale": sT, "num_inference_steps": steps})
                for i, e in list(enumerate(its))[s:s+32]]
        outs.extend(ed.run(reqs))
    return torch.stack(outs).float().clamp(0, 1)
def per_cat(its, v):
    cats = sorted({e.category for e in its})
    return {c: round(float(v[[i for i, e in enumerate(its) if e.category == c]].mean()), 4) for c in cats} | {"all": round(float(v.mean()), 4)}
l1 = lambda a, b: (a - b).abs().flatten(1).mean(1)
res = {}
vae = ed.components.vae if hasattr(ed, "components") else None
for split in ("test", "train"):
    its = items(split)
    x = torch.stack([e.load_input() for e in its]); y = torch.stack([e.load_target() for e in its])
    t0 = time.time(); out = run(its)
    res[f"{split}/ip2p"] = per_cat(its, l1(out, y)); res[f"{split}/identity"] = per_cat(its, l1(x, y))
    print(split, time.time() - t0, res[f"{split}/ip2p"]["all"], flush=True)
    if split == "test":
        torch.save(out, "runs/diag/test_out.pt")
        # instruction swap: each item gets the instruction of the item 1 category later (cyclic)
        sw = [its[(i + 1) % len(its)].instruction for i in range(len(its))]
        out_sw = run(its, sw)
        res["test/swap_change_l1"] = per_cat(its, l1(out_sw, out))
        res["test/swap_l1_target"] = per_cat(its, l1(out_sw, y))
        out_t1 = run(its, sT=1.0, sI=1.0)
        res["test/sI1_sT1"] = per_cat(its, l1(out_t1, y))
json.dump(res, open(f"runs/diag/diag-{src.replace(':','_').replace('/','_')}.json", "w"), indent=1)
print(json.dumps(res, indent=1))
