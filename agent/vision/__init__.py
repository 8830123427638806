"""Vision: frames in, faces and embeddings out (detector, aligner, embedder, model store)."""
