#!/usr/bin/env bash
# METHOD=search of recipes/train.sh (see there for every variable).
METHOD=search exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
