#!/usr/bin/env bash
# METHOD=full of recipes/train.sh (see there for every variable).
METHOD=full exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
