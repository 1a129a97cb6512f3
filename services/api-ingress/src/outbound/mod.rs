pub mod postgres;
pub mod rate_limit;
pub mod redis_cache;
