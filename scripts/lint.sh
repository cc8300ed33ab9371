#!/usr/bin/env bash
# The code's guard rails, run by scripts/test.sh before the tests: style (ruff), types (mypy, strict where the
# logic and the protocols live, and on the tests' fakes that implement them), layers (import-linter).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${ACCORDION_VENV:-/opt/accordion/venv}/bin
cd "$here"
echo "==> ruff"
"$bin/ruff" check src tests bench
echo "==> mypy (package)"
"$bin/mypy" -p accordion
echo "==> mypy --strict (model, policy, controller, errors, protocols; the tests' fakes)"
"$bin/mypy" --strict --follow-imports=silent src/accordion/model.py src/accordion/policy.py src/accordion/controller.py \
  src/accordion/errors.py src/accordion/schedulers/base.py src/accordion/providers/base.py
"$bin/mypy" --follow-imports=silent tests/test_controller.py
echo "==> import-linter"
(cd src && "$bin/lint-imports" --config ../pyproject.toml --no-cache)
