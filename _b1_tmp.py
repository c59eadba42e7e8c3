import sys, time
sys.argv=["x"]
from benchmarks import bench_api_tier as b
args = b.parse_args(["--docs", "3000"])
inputs = b.make_inputs(b.make_texts(args.docs, 1))
print(len(inputs), sum(i.est_tokens for i in inputs))
from tests.fakes.openai_server import count_tokens
print(sum(count_tokens(i.text) for i in inputs))
proc, url = b.start_server(args)
try:
    r = b.measure("naive", b.run_naive, url, inputs, args)
    print(r, r.share_429)
finally:
    proc.terminate(); proc.wait()
