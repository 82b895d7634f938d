"""Speed of the numpy reference against its torch and keras twins, measured side by side in one run.

    python -m benchmarks --out bench.json              # the full run (a few minutes on 2 cores)
    python -m benchmarks --out bench.json --quick      # a smoke test of the same code (seconds)

What is timed, for float32 and float64, on real MNIST (the 8x8 digits for the digits preset):

    batched_epoch_s      one epoch, 784-128-10 ReLU (preset mnist-relu-batched), batch 128, 60,000
                         rows in one seeded order: reference.train.train_epoch vs each twin's
                         train_epoch (its framework's own optimiser), and gemm_limit: only the matrix
                         products that epoch needs, back to back (benchmarks/gemm.py)
    per_sample_step_us   10,000 steps of the per-sample homework (preset mnist-sigmoid-per-sample,
                         784-32-32-10 sigmoid, batch 1), per step, in 10 pieces of 1,000 (below),
                         and numpy_floor: the same SGD step written straight (benchmarks/floor.py)
    cnn_epoch_s          one epoch of the CNN preset (mnist-cnn: conv 3x3 x8, relu, max-pool 2, conv 3x3
                         x16, relu, max-pool 2, dense 10), batch 64, 12,800 rows (200 steps): reference vs each
                         twin's train_epoch, and gemm_limit: the conv and dense GEMMs of that epoch
                         alone (benchmarks/gemm.py, conv_gemm_epoch)
    forward_backward_ms  one forward + backward of a batch of 128 through each preset, recording
                         every tensor (Network.trace vs twin.trace), per preset

Every contender starts each repetition from the same parameters. Repetitions are interleaved: each
round runs every (dtype, task, contender) once, so machine noise falls on all of them alike; round 0
warms up (keras compiles its training loop and holds each training array as a tensor, caches fill)
and is dropped. The per-sample contenders take turns within a round, 1,000 steps each (run_rounds),
so a drift of the VM's speed over seconds falls on all of them; a piece costs each contender one
train_epoch call's fixed cost (keras ~1.2-1.4 ms, torch ~0.5 ms, the reference ~0.1-0.25 ms on the
AMD EPYC Zen 3: 1.2-1.4, 0.5 and 0.1-0.25 us a step). Medians are reported. The
numpy BLAS, torch (the torch twin is built with `threads=`) and TensorFlow run on --threads threads. The JSON also holds the machine (CPU, cores,
load before and after, library versions, BLAS) and every repetition's time.

The machine's short name (machine.name: processor model and numpy's BLAS, "AMD EPYC, OpenBLAS 0.3.31
Haswell") is printed beside every figure and ratio, and written with every target verdict: `targets`
in the JSON, and one PASS / FAIL line per target at the end of the output (run.TARGETS: issue 16's
batched, per-sample and float32-sigmoid bars, issue 13's CNN bar), judged on the wall-clock medians.
"""

from benchmarks.run import run

__all__ = ["run"]
