#!/usr/bin/env bash
# METHOD=shared of recipes/train.sh (see there for every variable).
METHOD=shared exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
