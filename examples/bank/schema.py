from engine import define_schema, define_table, v

schema = define_schema({
    "accounts": define_table({"owner": v.string(), "balance": v.number()}).index("by_owner", ["owner"]),
    "statements": define_table({"owner": v.string(), "balance": v.union(v.number(), v.null())}),
})
