from engine import define_schema, define_table, v

schema = define_schema({
    "files": define_table({"storage_id": v.id("_storage"), "name": v.string()}),
})
