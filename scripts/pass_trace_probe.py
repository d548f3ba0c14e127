"""Prototype probe (issue 15, s11): 4-step streams with the denoising passes as one trace vs eager, paired;
run with PYTHONPATH=. python scripts/pass_trace_probe.py 8 [stub]."""
import time, statistics as S, torch, sys
torch.set_num_threads(1)
from mf.pipeline import load_studio, generate, warm_up
st = load_studio(assets="assets"); warm_up(st)
import numpy as np, mf.pipeline as P
if "stub" in sys.argv: st.video_codec.decode_uint8 = lambda x: np.zeros((x.shape[0], 64, 64, 3), np.uint8); P._AudioDecoder.__call__ = lambda self, a: np.zeros(a.shape[0]*160, np.float32)
def run(steps, seconds):
    t=[]; firsts=[]; rests=[]
    for ch in generate(st, steps=steps, seed=1, seconds=seconds):
        t.append(time.perf_counter()); firsts.append(ch.timings["steps_s"][0]); rests += ch.timings["steps_s"][1:]
    iv=[b-a for a,b in zip(t[9:],t[10:])]
    return S.median(firsts)*1e3, S.median(rests)*1e3, S.median(iv)*1e3
res={}
for rep in range(int(sys.argv[1])):
    for mode in (["on","off"] if rep%2==0 else ["off","on"]):
        st.model.traced_denoise = mode == "on"
        res.setdefault(mode,[]).append(run(4, 6.0))
for k,v in sorted(res.items()):
    print(k, "first %.2f rest %.2f interval %.2f" % tuple(S.median(x[i] for x in v) for i in range(3)))
print("paired interval on/off", sorted(round(a[2]/b[2],3) for a,b in zip(res["on"],res["off"])))
print("paired rest on-off", sorted(round(a[1]-b[1],2) for a,b in zip(res["on"],res["off"])))
