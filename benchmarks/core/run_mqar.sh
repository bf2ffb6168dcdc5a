#!/usr/bin/env bash
# The MQAR runs behind results/core/mqar.jsonl, in the order they were executed (a run already in the file is
# skipped, so this is resumable). vocab 512 instead of zoology's 8192 and 300 steps of 32 fresh sequences:
# the CPU budget (see README.md). The lines after "not reached" were queued but not run; the last block is a
# later session's 1000-step runs at (256,16).
set -euo pipefail
M="python -m benchmarks.core.mqar --vocab 512 --steps 300 --batch 32 --threads 1 --out results/core/mqar.jsonl"
ALL=mosaics,atlas_nopoly_c1,attention,linear_attention,atlas
$M --models mosaics,atlas_nopoly_c1,attention,linear_attention --settings 256:16 --widths 128 --lrs 1e-2
$M --models $ALL --settings 64:4,128:8 --widths 64 --lrs 1e-2
$M --models atlas --settings 256:16 --widths 128 --lrs 1e-2
$M --models atlas_nopoly_c1,attention,linear_attention --settings 64:4 --widths 64 --lrs 3e-3
$M --models mosaics,atlas_nopoly_c1,attention,linear_attention --settings 256:16 --widths 64 --lrs 1e-2
# not reached within the session's CPU budget:
$M --models atlas_nopoly_c1,attention,linear_attention --settings 128:8 --widths 64 --lrs 3e-3
$M --models atlas_nopoly_c1,mosaics,atlas,attention,linear_attention --settings 256:16 --widths 128 --lrs 3e-3
$M --models $ALL --settings 64:4,128:8,256:16 --widths 64 --lrs 3e-3
# a later session: (256,16) at 300 steps left Atlas at chance; 1000 steps at lr 3e-3 for the hardest setting
$M --models atlas --settings 256:16 --widths 64 --lrs 1e-2
M1000="${M/--steps 300/--steps 1000}"
$M1000 --models atlas --settings 256:16 --widths 64,128 --lrs 3e-3
$M1000 --models attention,mosaics,atlas_nopoly_c1,linear_attention --settings 256:16 --widths 128 --lrs 3e-3
# the same session: widths 128 at the two shorter settings (the grid), 300 steps
$M --models atlas --settings 64:4,128:8 --widths 128 --lrs 1e-2
$M --models mosaics,attention,linear_attention,atlas_nopoly_c1 --settings 64:4,128:8 --widths 128 --lrs 1e-2
# a third session: why width 128 is slow for Atlas at (128,8): lower learning rates, longer, and other head counts
# (heads = width // head dim; the default head dim is 16)
M600="${M/--steps 300/--steps 600}"
$M600 --models atlas --settings 128:8 --widths 128 --lrs 3e-3,1e-3
$M --models atlas --settings 128:8 --widths 64 --head-dim 8 --lrs 1e-2
$M --models atlas --settings 128:8 --widths 64 --head-dim 32 --lrs 1e-2
$M --models atlas --settings 128:8 --widths 128 --head-dim 32 --lrs 1e-2
# the same session, (256,16) at width 128 twice as long (run with --threads 2 on an otherwise idle machine)
M2000="${M/--steps 300/--steps 2000}"
${M2000/--threads 1/--threads 2} --models atlas --settings 256:16 --widths 128 --lrs 3e-3
# a fourth session: zoology's own training data, one model per run trained on its reproduction pool (64:4 x100k,
# 128:8/256:16/256:32/256:64 x20k each; --train-mix zoology) and tested on each setting. Two runs at a time, one
# per core.
MIX="${M/--steps 300/--steps 1000} --train-mix zoology --settings 64:4,128:8,256:16"
$MIX --widths 128 --models atlas --lrs 3e-3,1e-2
$MIX --widths 128 --models mosaics,atlas_nopoly_c1,attention,linear_attention --lrs 1e-2
$MIX --widths 128 --models atlas_nopoly,atlas_c1 --lrs 1e-2
$MIX --widths 128 --models attention,linear_attention,mosaics,atlas_nopoly_c1 --lrs 3e-3
${MIX/--steps 1000/--steps 5000} --widths 128 --models attention --lrs 3e-3,1e-3
$MIX --widths 128 --models atlas --lrs 1e-3
$MIX --widths 128 --models atlas --lrs 3e-3 --seed 1
$MIX --widths 64 --models atlas,mosaics,atlas_nopoly_c1,linear_attention --lrs 3e-3
# the same session: the goal's two models at zoology's vocabulary, 8192 (two threads, machine otherwise idle)
MIX8K="${MIX/--vocab 512/--vocab 8192}"
${MIX8K/--threads 1/--threads 2} --widths 128 --models atlas,mosaics --lrs 3e-3
