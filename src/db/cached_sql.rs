//! Raw SQL statements that diesel keeps prepared between executions.
//!
//! diesel never caches an upsert (`ON CONFLICT … DO UPDATE`), an `UPDATE`,
//! a raw `sql_query` or a SQLite batch insert: each execution parses its SQL
//! again. On SQLite, where the hot write paths run one row per statement,
//! that parsing was a third of a whole-district push. A `CachedSql` is a
//! fixed SQL template (`?` where each bind goes, written as `$n` on
//! PostgreSQL) with typed binds, which diesel's statement cache keeps by its
//! text: prepared once per connection, executed once per row.

use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::QueryResult;

/// One bind of SQL type `ST`.
pub struct Bind<ST, V> {
    value: V,
    sql_type: PhantomData<ST>,
}

/// A value bound as SQL type `ST`.
pub fn bind<ST, V>(value: V) -> Bind<ST, V> {
    Bind {
        value,
        sql_type: PhantomData,
    }
}

/// Binds pushed in order, each after the template's text up to its `?`.
pub trait Binds<DB: Backend> {
    fn push_each<'b>(
        &'b self,
        out: &mut AstPass<'_, 'b, DB>,
        pieces: &mut std::str::Split<'static, char>,
    ) -> QueryResult<()>;
}

impl<DB, ST, V> Binds<DB> for Bind<ST, V>
where
    DB: Backend + HasSqlType<ST>,
    V: ToSql<ST, DB>,
{
    fn push_each<'b>(
        &'b self,
        out: &mut AstPass<'_, 'b, DB>,
        pieces: &mut std::str::Split<'static, char>,
    ) -> QueryResult<()> {
        out.push_bind_param::<ST, V>(&self.value)?;
        out.push_sql(pieces.next().unwrap_or(""));
        Ok(())
    }
}

macro_rules! binds_for_tuples {
    ($($name:ident),+) => {
        impl<DB: Backend, $($name: Binds<DB>),+> Binds<DB> for ($($name,)+) {
            #[allow(non_snake_case)]
            fn push_each<'b>(
                &'b self,
                out: &mut AstPass<'_, 'b, DB>,
                pieces: &mut std::str::Split<'static, char>,
            ) -> QueryResult<()> {
                let ($($name,)+) = self;
                $($name.push_each(out, pieces)?;)+
                Ok(())
            }
        }
    };
}

binds_for_tuples!(A);
binds_for_tuples!(A, B, C, D, E);
binds_for_tuples!(A, B, C, D, E, F);
binds_for_tuples!(A, B, C, D, E, F, G);
binds_for_tuples!(A, B, C, D, E, F, G, H);
binds_for_tuples!(A, B, C, D, E, F, G, H, I, J);

/// A fixed SQL template and its binds, one per `?` in order.
pub struct CachedSql<B> {
    template: &'static str,
    binds: B,
}

/// The statement `template` with `binds`; the template must hold exactly
/// one `?` per bind and no other `?` (not even in a literal).
pub fn cached_sql<B>(template: &'static str, binds: B) -> CachedSql<B> {
    CachedSql { template, binds }
}

impl<B, Conn> diesel::RunQueryDsl<Conn> for CachedSql<B> {}

impl<B> QueryId for CachedSql<B> {
    type QueryId = ();
    // Not static: diesel keys the cached statement by its SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB: Backend, B: Binds<DB>> QueryFragment<DB> for CachedSql<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let mut pieces = self.template.split('?');
        out.push_sql(pieces.next().unwrap_or(""));
        self.binds.push_each(&mut out, &mut pieces)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
    use diesel::sql_types::{BigInt, Nullable, Text};
    use diesel::{Connection, RunQueryDsl};
    use std::sync::{Arc, Mutex};

    const UPSERT: &str = "INSERT INTO t (id, name, a, b, c) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, a = excluded.a + t.a";

    /// Counts the statements prepared for the cache.
    struct Prepared(Arc<Mutex<usize>>);

    impl Instrumentation for Prepared {
        fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
            if let InstrumentationEvent::CacheQuery { .. } = event {
                *self.0.lock().unwrap() += 1;
            }
        }
    }

    #[test]
    fn binds_go_where_the_template_says_and_the_statement_is_prepared_once() {
        let mut conn = diesel::SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, a INTEGER, b INTEGER, c TEXT)",
        )
        .unwrap();
        let prepared = Arc::new(Mutex::new(0));
        conn.set_instrumentation(Prepared(Arc::clone(&prepared)));
        for (id, name, a) in [(1, Some("a"), 5), (2, None, 7), (1, Some("b"), 10)] {
            cached_sql(
                UPSERT,
                (
                    bind::<BigInt, _>(id),
                    bind::<Nullable<Text>, _>(name),
                    bind::<BigInt, _>(a),
                    bind::<BigInt, _>(id * 100),
                    bind::<Text, _>(format!("row {id}")),
                ),
            )
            .execute(&mut conn)
            .unwrap();
        }
        #[derive(diesel::QueryableByName, Debug, PartialEq)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = Nullable<Text>)]
            name: Option<String>,
            #[diesel(sql_type = BigInt)]
            a: i64,
            #[diesel(sql_type = BigInt)]
            b: i64,
            #[diesel(sql_type = Text)]
            c: String,
        }
        let rows: Vec<Row> = diesel::sql_query("SELECT id, name, a, b, c FROM t ORDER BY id")
            .load(&mut conn)
            .unwrap();
        assert_eq!(
            rows,
            vec![
                Row {
                    id: 1,
                    name: Some("b".into()),
                    a: 15,
                    b: 100,
                    c: "row 1".into()
                },
                Row {
                    id: 2,
                    name: None,
                    a: 7,
                    b: 200,
                    c: "row 2".into()
                },
            ]
        );
        assert_eq!(
            *prepared.lock().unwrap(),
            1,
            "one statement prepared for three rows"
        );
    }
}
