"""Vector search test app: documents with an 8-dimensional embedding, filterable by kind."""
from engine import define_schema, define_table, v

schema = define_schema({
    "docs": define_table({
        "title": v.string(),
        "kind": v.string(),
        "embedding": v.optional(v.array(v.number())),
    }).vector_index("by_embedding", vector_field="embedding", dimensions=8, filter_fields=["kind"]),
})
