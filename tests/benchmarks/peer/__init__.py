"""The peer comparison: Supabase's stripe-sync-engine, installed here by npm (never a
runtime dependency of Lattice), fed the same signed events as the receiver."""
