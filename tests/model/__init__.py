"""Model-based tests: the engine checked step by step against `reference.Model`.

Profiles (environment): default, a few hundred examples in all (~30 s);
JACKPOT_SLOW=1, the soak (tens of thousands, marked `slow`, no timeout);
JACKPOT_QUICK=1, a few derandomized examples, for the mutation check.

The mutation check (mutmut 3, the `test` extra) runs in a copy of the
repository, so that its `mutants/` directory and cache stay out of the tree.
Copy a commit, not the working tree (another engineer's edits are not what
you mean to measure). The machine is shared: run it niced, with TMPDIR on a
tmpfs (the tests' SQLite fsyncs stay off the disk), two children at most.
Results, triage and the latest score: tests/model/MUTATION.md.

    mkdir -p /tmp/mut /dev/shm/mut && git archive HEAD src tests pyproject.toml \
        benchmarks examples scripts ops README.md | tar -x -C /tmp/mut && cd /tmp/mut
    cat >> pyproject.toml <<'TOML'
    [tool.mutmut]
    source_paths = ["src/jackpot"]
    also_copy = ["benchmarks", "examples", "scripts", "ops", "README.md"]
    only_mutate = ["src/jackpot/domain.py", "src/jackpot/money.py",
                   "src/jackpot/storage/sqlite.py", "src/jackpot/storage/base.py"]
    pytest_add_cli_args_test_selection = ["tests/unit", "tests/integration",
                                          "tests/controller", "tests/model",
                                          "tests/adversarial",
                                          "tests/backends/test_sqlite.py"]
    pytest_add_cli_args = ["-p", "no:cacheprovider", "--timeout=20"]
    TOML
    TMPDIR=/dev/shm/mut JACKPOT_QUICK=1 nohup nice -n 19 \
        mutmut run --max-children 2 > run.log 2>&1 &
    mutmut results; mutmut show <mutant>; mutmut run <mutant>  # re-run one

`--timeout=20` turns a mutant that hangs (waiting, so the CPU limit never
fires) into a failing test within 20 s instead of pytest's 300 s (mutmut
then counts it as killed, not as a timeout). Changing
the test selection resets every cached result; new test files are picked up
incrementally.
"""
