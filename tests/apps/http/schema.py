from engine import define_schema, define_table, v

schema = define_schema({
    "events": define_table({"kind": v.string(), "amount": v.number()}),
})
