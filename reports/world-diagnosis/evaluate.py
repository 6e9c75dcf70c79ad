import json, torch
torch.set_num_threads(1)
from ip2p.world.evaluate import evaluate_edits
res, _ = evaluate_edits("ip2p/world/weights/ip2p")
json.dump(res, open("runs/diag/eval_old.json", "w"), indent=1)
print(json.dumps({k: res[k] for k in ("targets",)}, indent=1))
print(res["editors"]["editor"]["edit_success_by_category"], res["editors"]["editor"]["edit_success"])
print(res["vae_roundtrip"])
