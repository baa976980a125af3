"""Model-based tests: the engine checked step by step against `reference.Model`.

Profiles (environment): default, a few hundred examples in all (~30 s);
JACKPOT_SLOW=1, the soak (tens of thousands, marked `slow`, no timeout);
JACKPOT_QUICK=1, a few derandomized examples, for the mutation check.

The mutation check (mutmut 3, the `test` extra) runs in a copy of the
repository, so that its `mutants/` directory and cache stay out of the tree:

    cp -r src tests pyproject.toml /tmp/mut && cd /tmp/mut
    cat >> pyproject.toml <<'TOML'
    [tool.mutmut]
    source_paths = ["src/jackpot"]
    only_mutate = ["src/jackpot/domain.py", "src/jackpot/money.py",
                   "src/jackpot/storage/sqlite.py", "src/jackpot/service.py"]
    pytest_add_cli_args_test_selection = ["tests/unit", "tests/integration",
                                          "tests/model", "tests/adversarial"]
    TOML
    JACKPOT_QUICK=1 nohup mutmut run --max-children 2 &
    mutmut results; mutmut show <mutant>
"""
