"""Tables of the isolation benchmark app: documents the bystander reads, and what the burners write."""
from engine import define_schema, define_table, v

schema = define_schema({
    "items": define_table({"n": v.number(), "text": v.string()}),
    "burns": define_table({"seconds": v.number(), "spun": v.number()}),
})
