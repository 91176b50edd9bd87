"""A full-text search index and a vector index side by side (the checkpoint tests' app)."""
from engine import define_schema, define_table, v

schema = define_schema({
    "messages": define_table({"body": v.string(), "channel": v.string()})
                .search_index("search_body", search_field="body", filter_fields=["channel"]),
    "docs": define_table({"title": v.string(), "kind": v.string(), "embedding": v.array(v.number())})
            .vector_index("by_embedding", vector_field="embedding", dimensions=4, filter_fields=["kind"]),
})
