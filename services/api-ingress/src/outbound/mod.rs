pub mod postgres;
pub mod redis_cache;
