"""Schema of the fidelity test app: counters with an exact int64 field, a float field and an untyped one."""
from engine import define_schema, define_table, v

schema = define_schema({
    "counters": define_table({"count": v.int64(), "score": v.number(), "other": v.any()}),
})
