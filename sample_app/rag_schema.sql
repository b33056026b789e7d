-- The sample app's vector (RAG) schema; the vector-schema stage dry-runs, then applies it.
CREATE TABLE IF NOT EXISTS rag_documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS rag_embeddings (
    document_id INTEGER NOT NULL REFERENCES rag_documents (id),
    vector TEXT NOT NULL  -- JSON array; pgvector's vector(n) in noesis2
);
CREATE INDEX IF NOT EXISTS rag_embeddings_by_document ON rag_embeddings (document_id);
