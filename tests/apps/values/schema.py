"""Schema of the values test app: named cells holding any Convex value."""
from engine import define_schema, define_table, v

schema = define_schema({
    "cells": define_table({"key": v.string(), "value": v.any()}).index("by_key", ["key"]),
})
