//! Full-text index over log bodies: one tantivy index beside each log Parquet file.
//!
//! The index stores no text. A document holds the bodies of `rows_per_document` consecutive
//! rows (16 by default, each body a value of its own) and carries `row`, the first of its rows'
//! positions in the Parquet file, and `rows`, how many, as fast fields, so a hit becomes a row
//! selection for the Parquet reader whatever segment layout tantivy chose. (Indexes written
//! before `rows` existed hold a row per document.) Queries use tantivy's query syntax with AND
//! between terms (as Quickwit does), over the default tokenizer (split on non-alphanumerics,
//! lowercase).
//!
//! The on-disk index is a *filter*: it records which documents hold each term, without term
//! frequencies or positions, which would triple its size; a term frequent in the logs is
//! listed once per document rather than once per row, which halves the index.
//! [`FullTextIndex::candidates`] therefore answers a superset of the rows that match (a
//! phrase becomes all of its terms, exclusions are ignored, a hit stands for its document's
//! rows); [`matches_bodies`] then decides each candidate exactly, with the full query
//! semantics, and answers rows that no index covers, so a row gives the same answer before
//! and after a flush.
//!
//! The exact semantics are those of an in-memory tantivy index with positions over the bodies.
//! Building one per record batch cost more than the needle search it serves, so queries of
//! words, phrases, `*` and boolean operators are decided on each body's tokens directly
//! (`BodyMatcher`), as that index would; other queries (ranges, sets, slop, phrase prefixes)
//! still build it. Each query string is parsed once and cached.
//!
//! A search runs on a blocking thread, which nothing outside it can stop. The `_cancellable`
//! searches take a [`Cancel`], asked before each segment and every [`CANCEL_CHECK_DOCS`]
//! documents within one, so that a search whose query was dropped (its client went away, it timed
//! out) ends within a few thousand documents instead of running to the end ([`CancelFlag`],
//! [`CancelOnDrop`]).

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, BooleanArray, BooleanBufferBuilder, StringArray};
use parking_lot::Mutex;
use tantivy::Term;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::indexer::UserOperation;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery, Weight};
use tantivy::query_grammar::{UserInputAst, UserInputLeaf};
use tantivy::schema::{FAST, Field, IndexRecordOption, Schema, TEXT, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{TextAnalyzer, TokenStream};
use tantivy::{
    COLLECT_BLOCK_BUFFER_LEN, DocId, DocSet, Index, IndexWriter, Score, SegmentOrdinal, SegmentReader, TantivyDocument,
    TantivyError,
};

use crate::error::{Error, Result};

const BODY_FIELD: &str = "body";
/// The first row of a document's rows.
const ROW_FIELD: &str = "row";
/// How many rows a document holds; indexes written before documents held several rows lack it.
const ROWS_FIELD: &str = "rows";
/// tantivy's floor for a writer's memory arena is 15 MB; more makes fewer segments per file.
const WRITER_MEMORY_BYTES: usize = 96 * 1024 * 1024;
/// Documents handed to the indexing thread at a time.
const INDEX_BATCH_DOCS: usize = 4096;
const IN_MEMORY_WRITER_BYTES: usize = 16 * 1024 * 1024;
/// Documents a search goes through between two questions to its [`Cancel`]: a segment of a large
/// file holds millions, and one atomic load per few thousand costs nothing measurable.
pub const CANCEL_CHECK_DOCS: usize = 64 * COLLECT_BLOCK_BUFFER_LEN;

/// Whether a running index search should stop: asked before each segment and every
/// [`CANCEL_CHECK_DOCS`] documents within one. `true` ends the search with [`Error::Cancelled`].
pub trait Cancel: Sync {
    fn is_cancelled(&self) -> bool;
}

impl<F: Fn() -> bool + Sync> Cancel for F {
    fn is_cancelled(&self) -> bool {
        self()
    }
}

/// A search that is never cancelled.
const NEVER: fn() -> bool = || false;

/// A cancellation shared by the blocking thread that searches and the future that waits for it.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> CancelFlag {
        CancelFlag::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Cancels when dropped. The future that waits for a blocking search holds it, so that the
    /// search stops when that future is dropped, as a query's is when its client goes away.
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

impl Cancel for CancelFlag {
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Cancels its [`CancelFlag`] when dropped (also after the search ended, which is harmless).
#[derive(Debug)]
pub struct CancelOnDrop(CancelFlag);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

struct IndexSchema {
    schema: Schema,
    body: Field,
    row: Field,
}

/// The exact schema, with positions, for answering queries over bodies in memory.
fn index_schema() -> IndexSchema {
    let mut builder = Schema::builder();
    let body = builder.add_text_field(BODY_FIELD, TEXT);
    let row = builder.add_u64_field(ROW_FIELD, FAST);
    IndexSchema { schema: builder.build(), body, row }
}

/// The tokenizer of the on-disk index: tantivy's default (alphanumeric runs, lowercased, at most
/// 40 bytes) without tokens made only of digits. Numbers in logs are mostly counters, ids and
/// times, nearly all distinct: they were most of the term dictionary and a quarter of the
/// postings, for queries that are rare. A query on a number reads every row and decides it
/// exactly; words around the number still narrow it.
const FILTER_TOKENIZER: &str = "wake_filter";

#[derive(Clone)]
struct FilterTokenizer {
    inner: tantivy::tokenizer::TextAnalyzer,
}

impl Default for FilterTokenizer {
    fn default() -> Self {
        FilterTokenizer {
            inner: tantivy::tokenizer::TextAnalyzer::builder(tantivy::tokenizer::SimpleTokenizer::default())
                .filter(tantivy::tokenizer::RemoveLongFilter::limit(40))
                .filter(tantivy::tokenizer::LowerCaser)
                .build(),
        }
    }
}

/// The inner analyzer's tokens, less the all-digit ones, without copying any.
struct FilterTokenStream<'a> {
    inner: tantivy::tokenizer::BoxTokenStream<'a>,
}

impl tantivy::tokenizer::Tokenizer for FilterTokenizer {
    type TokenStream<'a> = FilterTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> FilterTokenStream<'a> {
        FilterTokenStream { inner: self.inner.token_stream(text) }
    }
}

impl TokenStream for FilterTokenStream<'_> {
    fn advance(&mut self) -> bool {
        while self.inner.advance() {
            if !self.inner.token().text.bytes().all(|b| b.is_ascii_digit()) {
                return true;
            }
        }
        false
    }

    fn token(&self) -> &tantivy::tokenizer::Token {
        self.inner.token()
    }

    fn token_mut(&mut self) -> &mut tantivy::tokenizer::Token {
        self.inner.token_mut()
    }
}

fn register_tokenizer(index: &Index) {
    index.tokenizers().register(FILTER_TOKENIZER, FilterTokenizer::default());
}

/// The on-disk schema: which documents hold each term, nothing more; `row_counts`: whether
/// documents say how many rows they hold (without, each holds one, as indexes once did).
fn filter_schema(row_counts: bool) -> IndexSchema {
    let mut builder = Schema::builder();
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(FILTER_TOKENIZER)
        .set_index_option(IndexRecordOption::Basic)
        .set_fieldnorms(false);
    let body = builder.add_text_field(BODY_FIELD, TextOptions::default().set_indexing_options(indexing));
    let row = builder.add_u64_field(ROW_FIELD, FAST);
    if row_counts {
        builder.add_u64_field(ROWS_FIELD, FAST);
    }
    IndexSchema { schema: builder.build(), body, row }
}

/// Writes the index of one Parquet file's bodies, in the file's row order, into `dir`: a
/// document per `rows_per_document` consecutive rows (at least 1).
pub fn build_index<'a>(
    dir: &Path,
    bodies: impl Iterator<Item = Option<&'a str>>,
    rows_per_document: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let fields = filter_schema(true);
    let index = Index::create_in_dir(dir, fields.schema.clone())?;
    register_tokenizer(&index);
    write_documents(&index, &fields, bodies, rows_per_document, WRITER_MEMORY_BYTES)
}

/// Adds `bodies` to `index` as documents of `rows_per_document` consecutive rows each (which
/// the schema records, when it has the field).
fn write_documents<'a>(
    index: &Index,
    fields: &IndexSchema,
    bodies: impl Iterator<Item = Option<&'a str>>,
    rows_per_document: usize,
    memory_bytes: usize,
) -> Result<()> {
    let rows = index.schema().get_field(ROWS_FIELD).ok();
    let mut writer: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, memory_bytes)?;
    // Documents go to tantivy's indexing thread in batches: one channel message per document
    // made the two threads trade places for every row.
    let mut batch = Vec::with_capacity(INDEX_BATCH_DOCS);
    let rows_per_document = rows_per_document.max(1);
    let mut bodies = bodies.peekable();
    let mut first_row = 0u64;
    while bodies.peek().is_some() {
        let mut document = TantivyDocument::new();
        let mut count = 0u64;
        // Each body is a value of its own: no token runs from one row into the next.
        for body in bodies.by_ref().take(rows_per_document) {
            if let Some(body) = body {
                document.add_text(fields.body, body);
            }
            count += 1;
        }
        document.add_u64(fields.row, first_row);
        if let Some(rows) = rows {
            document.add_u64(rows, count);
        }
        first_row += count;
        batch.push(UserOperation::Add(document));
        if batch.len() == INDEX_BATCH_DOCS {
            writer.run(std::mem::replace(&mut batch, Vec::with_capacity(INDEX_BATCH_DOCS)))?;
        }
    }
    if !batch.is_empty() {
        writer.run(batch)?;
    }
    writer.commit()?;
    // Not merged into one segment: measured, merging saved 4 % of the index for 35 % more
    // flush CPU.
    writer.wait_merging_threads()?;
    Ok(())
}

fn parse_query(index: &Index, body: Field, query: &str) -> Result<Box<dyn Query>> {
    let mut parser = QueryParser::for_index(index, vec![body]);
    parser.set_conjunction_by_default();
    parser
        .parse_query(query)
        .map_err(|error| Error::FullTextQuery { query: query.to_string(), reason: error.to_string() })
}

/// Checks a query's syntax without running it, for errors at planning time.
pub fn validate_query(query: &str) -> Result<()> {
    compiled_query(query).map(|_| ())
}

/// An in-memory index with the exact schema, never written to: the parser and the analyzer
/// every query is compiled with, built once rather than for each query or file.
struct ExactSchema {
    index: Index,
    body: Field,
}

static EXACT_SCHEMA: LazyLock<ExactSchema> = LazyLock::new(|| {
    let fields = index_schema();
    ExactSchema { index: Index::create_in_ram(fields.schema), body: fields.body }
});

/// Queries are few and repeated: the same string arrives once per file and once per record
/// batch. When the cache is full it starts over rather than tracking use.
const COMPILED_QUERY_CACHE_ENTRIES: usize = 256;

static COMPILED_QUERIES: LazyLock<Mutex<HashMap<String, Arc<CompiledQuery>>>> = LazyLock::new(Default::default);

/// A query string parsed once, for every file's index and every batch of bodies.
struct CompiledQuery {
    ast: UserInputAst,
    /// `None` when the query uses more of tantivy than [`BodyMatcher`] reproduces.
    matcher: Option<BodyMatcher>,
}

/// The query's syntax is checked by tantivy's own parser, configured as for the in-memory index,
/// so errors are exactly the parser's.
fn compiled_query(query: &str) -> Result<Arc<CompiledQuery>> {
    if let Some(compiled) = COMPILED_QUERIES.lock().get(query) {
        return Ok(compiled.clone());
    }
    let exact = &*EXACT_SCHEMA;
    parse_query(&exact.index, exact.body, query)?;
    let ast = tantivy::query_grammar::parse_query(query)
        .map_err(|_| Error::FullTextQuery { query: query.to_string(), reason: "invalid query".into() })?;
    let matcher = BodyMatcher::compile(&ast, exact.index.tokenizer_for_field(exact.body)?);
    let compiled = Arc::new(CompiledQuery { ast, matcher });
    let mut cache = COMPILED_QUERIES.lock();
    if cache.len() >= COMPILED_QUERY_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(query.to_string(), compiled.clone());
    Ok(compiled)
}

/// Decides a query on a body's tokens directly, as the in-memory index would, without building
/// one: for a handful of candidate rows, creating an index, a writer and a reader cost far more
/// than the search. It covers terms, phrases without slop, `*` and boolean combinations of them;
/// [`BodyMatcher::compile`] declines anything else.
struct BodyMatcher {
    /// The analyzer of the exact schema's `body`, as the index applies it to documents.
    analyzer: TextAnalyzer,
    /// The distinct terms the query looks up, indexed by [`Condition`].
    terms: Vec<String>,
    condition: Condition,
}

/// The query as tantivy's parser lowers it, over the positions of [`BodyMatcher::terms`].
enum Condition {
    Never,
    Always,
    HasTerm(usize),
    /// Terms at fixed distances from the first one: the parser keeps each token's position, so a
    /// token the analyzer drops (longer than 40 bytes) still leaves its gap.
    Phrase(Vec<(usize, usize)>),
    /// tantivy's `BooleanQuery` as the parser builds it: required clauses if any, else at least
    /// one optional clause; optional clauses beside required ones only affect scores, and
    /// exclusions alone match nothing.
    Boolean {
        must: Vec<Condition>,
        should: Vec<Condition>,
        must_not: Vec<Condition>,
    },
}

/// A part of the query compiled, or gone: the parser drops a word without any token (`"..."`)
/// from its clause, and a clause left empty from its parent.
enum Compiled {
    Condition(Condition),
    Dropped,
}

impl BodyMatcher {
    /// `None` when the query needs the in-memory index.
    fn compile(ast: &UserInputAst, mut analyzer: TextAnalyzer) -> Option<BodyMatcher> {
        let mut terms = Vec::new();
        let condition = match compile_ast(ast, &mut analyzer, &mut terms)? {
            Compiled::Condition(condition) => condition,
            // tantivy answers a query with nothing left in it with `EmptyQuery`.
            Compiled::Dropped => Condition::Never,
        };
        Some(BodyMatcher { analyzer, terms, condition })
    }

    /// Whether each body matches; a null body never does.
    fn matches(&self, bodies: &StringArray) -> BooleanArray {
        let mut matched = BooleanBufferBuilder::new(bodies.len());
        let constant = match self.condition {
            Condition::Never => Some(false),
            Condition::Always => Some(true),
            _ => None,
        };
        let mut analyzer = self.analyzer.clone();
        let mut positions: Vec<Vec<usize>> = vec![Vec::new(); self.terms.len()];
        for row in 0..bodies.len() {
            let found = bodies.is_valid(row)
                && constant.unwrap_or_else(|| {
                    positions.iter_mut().for_each(Vec::clear);
                    let mut stream = analyzer.token_stream(bodies.value(row));
                    while stream.advance() {
                        let token = stream.token();
                        if let Some(term) = self.terms.iter().position(|t| *t == token.text) {
                            positions[term].push(token.position);
                        }
                    }
                    self.condition.holds(&positions)
                });
            matched.append(found);
        }
        BooleanArray::new(matched.finish(), None)
    }
}

fn compile_ast(ast: &UserInputAst, analyzer: &mut TextAnalyzer, terms: &mut Vec<String>) -> Option<Compiled> {
    match ast {
        UserInputAst::Boost(inner, boost) => {
            let inner = compile_ast(inner, analyzer, terms)?;
            // The parser drops a boost of 1 (as f32) but keeps any other, and a boosted query
            // with nothing in it becomes an `EmptyQuery` that its clause does not drop.
            let kept = ((boost.into_inner() as Score) - 1.0).abs() >= Score::EPSILON;
            match inner {
                Compiled::Dropped if kept => Some(Compiled::Condition(Condition::Never)),
                inner => Some(inner),
            }
        }
        UserInputAst::Leaf(leaf) => match leaf.as_ref() {
            UserInputLeaf::All => Some(Compiled::Condition(Condition::Always)),
            UserInputLeaf::Literal(literal) if literal.field_name.as_deref().is_none_or(|f| f == BODY_FIELD) => {
                let mut tokens = Vec::new();
                let mut stream = analyzer.token_stream(&literal.phrase);
                while stream.advance() {
                    let token = stream.token();
                    tokens.push((token.position, token.text.clone()));
                }
                match tokens.as_slice() {
                    // A phrase prefix expands to at most 50 terms of the index's dictionary,
                    // which depends on the batch; one with fewer than two tokens is a parse error.
                    _ if literal.prefix => None,
                    [] => Some(Compiled::Dropped),
                    // A single term ignores slop.
                    [(_, text)] => Some(Compiled::Condition(Condition::HasTerm(intern(terms, text)))),
                    _ if literal.slop > 0 => None,
                    [(first, _), ..] => {
                        let first = *first;
                        let phrase =
                            tokens.iter().map(|(position, text)| (position - first, intern(terms, text))).collect();
                        Some(Compiled::Condition(Condition::Phrase(phrase)))
                    }
                }
            }
            // Ranges, sets, `field:*`, regexes and other fields.
            _ => None,
        },
        UserInputAst::Clause(clauses) => {
            let (mut must, mut should, mut must_not) = (Vec::new(), Vec::new(), Vec::new());
            for (occur, clause) in clauses {
                let Compiled::Condition(condition) = compile_ast(clause, analyzer, terms)? else {
                    continue;
                };
                // The parser joins unmarked clauses with AND (`set_conjunction_by_default`).
                match occur.unwrap_or(Occur::Must) {
                    Occur::Must => must.push(condition),
                    Occur::Should => should.push(condition),
                    Occur::MustNot => must_not.push(condition),
                }
            }
            if must.is_empty() && should.is_empty() && must_not.is_empty() {
                return Some(Compiled::Dropped);
            }
            Some(Compiled::Condition(Condition::Boolean { must, should, must_not }))
        }
    }
}

fn intern(terms: &mut Vec<String>, text: &str) -> usize {
    terms.iter().position(|t| t == text).unwrap_or_else(|| {
        terms.push(text.to_string());
        terms.len() - 1
    })
}

impl Condition {
    /// `positions[term]`: where each of the query's terms stands in the body, ascending.
    fn holds(&self, positions: &[Vec<usize>]) -> bool {
        match self {
            Condition::Never => false,
            Condition::Always => true,
            Condition::HasTerm(term) => !positions[*term].is_empty(),
            Condition::Phrase(phrase) => {
                let Some(((_, first), rest)) = phrase.split_first() else {
                    return false;
                };
                positions[*first].iter().any(|&start| {
                    rest.iter().all(|&(distance, term)| positions[term].binary_search(&(start + distance)).is_ok())
                })
            }
            Condition::Boolean { must, should, must_not } => {
                let included = if !must.is_empty() {
                    must.iter().all(|c| c.holds(positions))
                } else {
                    should.iter().any(|c| c.holds(positions))
                };
                included && !must_not.iter().any(|c| c.holds(positions))
            }
        }
    }
}

/// An opened on-disk index.
pub struct FullTextIndex {
    index: Index,
    body: Field,
    reader: tantivy::IndexReader,
}

impl FullTextIndex {
    pub fn open(dir: &Path) -> Result<FullTextIndex> {
        let index = Index::open_in_dir(dir)?;
        register_tokenizer(&index);
        let body = index.schema().get_field(BODY_FIELD)?;
        let reader = index.reader_builder().reload_policy(tantivy::ReloadPolicy::Manual).try_into()?;
        Ok(FullTextIndex { index, body, reader })
    }

    /// Row numbers (positions in the Parquet file), ascending, that may match `query`: every
    /// matching row is among them; [`matches_bodies`] decides.
    pub fn candidates(&self, query: &str) -> Result<Vec<u64>> {
        self.candidates_cancellable(query, &NEVER)
    }

    /// [`FullTextIndex::candidates`], or [`Error::Cancelled`] once `cancel` says so.
    pub fn candidates_cancellable(&self, query: &str, cancel: &dyn Cancel) -> Result<Vec<u64>> {
        // Syntax and field errors are reported as the exact parser sees them.
        let compiled = compiled_query(query)?;
        let superset = self.superset(&compiled.ast);
        search_rows(&self.reader.searcher(), superset.as_ref(), cancel)
    }

    /// Row numbers, ascending, whose body may contain `needle` as a substring (case-sensitive
    /// substring search, as LogQL's `|=`). Every alphanumeric run of the needle is part of a
    /// token of any matching line: a run inside the needle is a whole token, the first run ends
    /// a token, the last run starts one, a run spanning the needle lies within one. Runs of
    /// digits only, and runs longer than the tokenizer keeps, are not in the index and narrow
    /// nothing.
    pub fn substring_candidates(&self, needle: &str) -> Result<Vec<u64>> {
        self.substring_candidates_cancellable(needle, &NEVER)
    }

    /// [`FullTextIndex::substring_candidates`], or [`Error::Cancelled`] once `cancel` says so.
    pub fn substring_candidates_cancellable(&self, needle: &str, cancel: &dyn Cancel) -> Result<Vec<u64>> {
        let lower = needle.to_lowercase();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut start = None;
        for (i, c) in lower.char_indices() {
            match (c.is_alphanumeric(), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    runs.push((s, i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push((s, lower.len()));
        }
        // Whole terms and prefixes are cheap lookups in the term dictionary; a suffix or infix
        // needs a pass over all of it. Any subset of the conditions still gives a superset, so
        // the expensive ones are used only when nothing cheaper narrows the search.
        let mut required: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut costly: Vec<String> = Vec::new();
        for (from, to) in runs {
            let run = &lower[from..to];
            if run.len() > 40 || run.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            // Alphanumeric runs hold no regex metacharacters.
            match (from == 0, to == lower.len()) {
                (false, false) => {
                    let term = Term::from_field_text(self.body, run);
                    required.push((Occur::Must, Box::new(TermQuery::new(term, IndexRecordOption::Basic))));
                }
                (false, true) => required.push((Occur::Must, Box::new(self.prefix_query(run)))),
                (true, false) => costly.push(format!(".*{run}")),
                (true, true) => costly.push(format!(".*{run}.*")),
            }
        }
        if required.is_empty() {
            for pattern in costly {
                let query = tantivy::query::RegexQuery::from_pattern(&pattern, self.body)?;
                required.push((Occur::Must, Box::new(query)));
            }
        }
        let query: Box<dyn Query> =
            if required.is_empty() { Box::new(AllQuery) } else { Box::new(BooleanQuery::new(required)) };
        search_rows(&self.reader.searcher(), query.as_ref(), cancel)
    }

    /// Rows holding a term that starts with `prefix`: a range of the term dictionary, which
    /// costs a seek where a `prefix.*` regex would first build an automaton.
    fn prefix_query(&self, prefix: &str) -> RangeQuery {
        let lower = Term::from_field_text(self.body, prefix);
        // The smallest string above every extension of `prefix`: its last byte below 0xFF
        // incremented, the bytes after it dropped.
        let mut end = prefix.as_bytes().to_vec();
        while end.last() == Some(&0xFF) {
            end.pop();
        }
        let upper = match end.last_mut() {
            Some(last) => {
                *last += 1;
                let mut term = Term::from_field_text(self.body, "");
                term.append_bytes(&end);
                Bound::Excluded(term)
            }
            None => Bound::Unbounded,
        };
        RangeQuery::new(Bound::Included(lower), upper)
    }

    /// A query over the filter index that matches at least every row `ast` matches.
    fn superset(&self, ast: &UserInputAst) -> Box<dyn Query> {
        match ast {
            UserInputAst::Boost(inner, _) => self.superset(inner),
            UserInputAst::Leaf(leaf) => match leaf.as_ref() {
                UserInputLeaf::Literal(literal) if literal.field_name.as_deref().is_none_or(|f| f == BODY_FIELD) => {
                    // A phrase's rows hold each of its terms; a prefix's last term may be longer.
                    let mut terms = self.terms(&literal.phrase);
                    if literal.prefix {
                        terms.pop();
                    }
                    match terms.len() {
                        0 => Box::new(AllQuery),
                        1 => Box::new(TermQuery::new(terms.remove(0), IndexRecordOption::Basic)),
                        _ => Box::new(BooleanQuery::new(
                            terms
                                .into_iter()
                                .map(|t| (Occur::Must, Box::new(TermQuery::new(t, IndexRecordOption::Basic)) as _))
                                .collect(),
                        )),
                    }
                }
                _ => Box::new(AllQuery),
            },
            UserInputAst::Clause(clauses) => {
                // Exclusions are dropped (the superset of "not x" is everything). With the
                // parser's AND default, an unmarked clause is required.
                let required: Vec<_> = clauses
                    .iter()
                    .filter(|(occur, _)| matches!(occur, None | Some(Occur::Must)))
                    .map(|(_, ast)| (Occur::Must, self.superset(ast)))
                    .collect();
                if !required.is_empty() {
                    return Box::new(BooleanQuery::new(required));
                }
                let optional: Vec<_> = clauses
                    .iter()
                    .filter(|(occur, _)| matches!(occur, Some(Occur::Should)))
                    .map(|(_, ast)| (Occur::Should, self.superset(ast)))
                    .collect();
                if optional.is_empty() { Box::new(AllQuery) } else { Box::new(BooleanQuery::new(optional)) }
            }
        }
    }

    fn terms(&self, text: &str) -> Vec<Term> {
        let mut analyzer = match self.index.tokenizer_for_field(self.body) {
            Ok(analyzer) => analyzer,
            Err(_) => return Vec::new(),
        };
        let mut stream = analyzer.token_stream(text);
        let mut terms = Vec::new();
        while stream.advance() {
            terms.push(Term::from_field_text(self.body, &stream.token().text));
        }
        terms
    }
}

/// Answers `query` over in-memory bodies; a null body never matches.
pub fn matches_bodies(bodies: &StringArray, query: &str) -> Result<BooleanArray> {
    // Compile first: a bad query is the caller's error even when there is nothing to search.
    match &compiled_query(query)?.matcher {
        Some(matcher) => Ok(matcher.matches(bodies)),
        None => matches_bodies_by_index(bodies, query),
    }
}

/// The reference semantics: the bodies written to an in-memory index and searched there.
fn matches_bodies_by_index(bodies: &StringArray, query: &str) -> Result<BooleanArray> {
    let fields = index_schema();
    let index = Index::create_in_ram(fields.schema.clone());
    let parsed = parse_query(&index, fields.body, query)?;
    let mut matched = BooleanBufferBuilder::new(bodies.len());
    matched.append_n(bodies.len(), false);
    if bodies.len() == bodies.null_count() {
        return Ok(BooleanArray::new(matched.finish(), None));
    }
    write_documents(
        &index,
        &fields,
        (0..bodies.len()).map(|i| bodies.is_valid(i).then(|| bodies.value(i))),
        1,
        IN_MEMORY_WRITER_BYTES,
    )?;
    let reader = index.reader_builder().reload_policy(tantivy::ReloadPolicy::Manual).try_into()?;
    let searcher: tantivy::Searcher = tantivy::IndexReader::searcher(&reader);
    for row in search_rows(&searcher, &parsed, &NEVER)? {
        // A null body is a document without text, which `*` would match.
        if bodies.is_valid(row as usize) {
            matched.set_bit(row as usize, true);
        }
    }
    Ok(BooleanArray::new(matched.finish(), None))
}

/// Bytes an index takes on disk.
pub fn index_size_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// The rows of the documents `query` hits, ascending, unless `cancel` stops the search.
fn search_rows(searcher: &tantivy::Searcher, query: &dyn Query, cancel: &dyn Cancel) -> Result<Vec<u64>> {
    let collector = RowCollector { cancel, cancelled: AtomicBool::new(false) };
    let rows = searcher.search(query, &collector);
    // The collector stops the search with an error of tantivy's; this is what it meant.
    if collector.cancelled.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    Ok(rows?)
}

/// Collects the rows of the documents hit, ascending, asking `cancel` as it goes.
struct RowCollector<'a> {
    cancel: &'a dyn Cancel,
    /// Set when `cancel` stopped the search.
    cancelled: AtomicBool,
}

impl RowCollector<'_> {
    fn check(&self) -> tantivy::Result<()> {
        if self.cancel.is_cancelled() {
            self.cancelled.store(true, Ordering::Relaxed);
            return Err(TantivyError::InternalError("the search was cancelled".into()));
        }
        Ok(())
    }
}

struct RowSegmentCollector {
    first_rows: Column<u64>,
    /// Rows per document; `None` for an index of a document per row.
    row_counts: Option<Column<u64>>,
    hits: Vec<u64>,
}

impl Collector for RowCollector<'_> {
    type Fruit = Vec<u64>;
    type Child = RowSegmentCollector;

    /// tantivy's own loop over a segment's documents, which cannot be stopped, with a question to
    /// `cancel` before it and every [`CANCEL_CHECK_DOCS`] documents.
    fn collect_segment(
        &self,
        weight: &dyn Weight,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<Vec<u64>> {
        self.check()?;
        let mut collector = self.for_segment(segment, reader)?;
        let mut docs = weight.scorer(reader, 1.0)?;
        let alive = reader.alive_bitset();
        let mut buffer = [0; COLLECT_BLOCK_BUFFER_LEN];
        let mut unchecked = 0;
        loop {
            let filled = docs.fill_buffer(&mut buffer);
            for &doc in &buffer[..filled] {
                if alive.is_none_or(|alive| alive.is_alive(doc)) {
                    collector.collect(doc, 0.0);
                }
            }
            if filled < buffer.len() {
                break;
            }
            unchecked += filled;
            if unchecked >= CANCEL_CHECK_DOCS {
                unchecked = 0;
                self.check()?;
            }
        }
        Ok(collector.harvest())
    }

    fn for_segment(&self, _segment: SegmentOrdinal, reader: &SegmentReader) -> tantivy::Result<RowSegmentCollector> {
        let fast_fields = reader.fast_fields();
        let row_counts = match reader.schema().get_field(ROWS_FIELD) {
            Ok(_) => Some(fast_fields.u64(ROWS_FIELD)?),
            Err(_) => None,
        };
        Ok(RowSegmentCollector { first_rows: fast_fields.u64(ROW_FIELD)?, row_counts, hits: Vec::new() })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<u64>>) -> tantivy::Result<Vec<u64>> {
        let mut rows: Vec<u64> = fruits.into_iter().flatten().collect();
        rows.sort_unstable();
        Ok(rows)
    }
}

impl SegmentCollector for RowSegmentCollector {
    type Fruit = Vec<u64>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if let Some(first) = self.first_rows.first(doc) {
            let count = self.row_counts.as_ref().map_or(Some(1), |counts| counts.first(doc)).unwrap_or(1);
            self.hits.extend(first..first + count);
        }
    }

    fn harvest(self) -> Vec<u64> {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODIES: [Option<&str>; 6] = [
        Some("Connection refused by peer 10.0.0.1"),
        None,
        Some("request req-7f3a9c1e5b failed: timeout"),
        Some("all good"),
        Some("ERROR: disk full"),
        Some("connection reset; error while reading"),
    ];

    fn expected(query: &str) -> Vec<u64> {
        let array = StringArray::from(BODIES.to_vec());
        let matched = matches_bodies(&array, query).unwrap();
        (0..matched.len()).filter(|&i| matched.value(i)).map(|i| i as u64).collect()
    }

    #[test]
    fn on_disk_candidates_cover_the_exact_answer() {
        let dir = tempfile::tempdir().unwrap();
        build_index(dir.path(), BODIES.iter().copied(), 1).unwrap();
        let index = FullTextIndex::open(dir.path()).unwrap();
        // (query, exact rows, candidate rows): candidates are exact for terms, a superset for
        // phrases (all terms, any order) and exclusions (ignored).
        for (query, exact, candidates) in [
            ("connection", vec![0, 5], vec![0, 5]),
            ("error", vec![4, 5], vec![4, 5]),
            ("ERROR", vec![4, 5], vec![4, 5]),
            ("connection error", vec![5], vec![5]),
            ("connection OR disk", vec![0, 4, 5], vec![0, 4, 5]),
            ("\"disk full\"", vec![4], vec![4]),
            ("req-7f3a9c1e5b", vec![2], vec![2]),
            ("\"error connection\"", vec![], vec![5]),
            ("connection -error", vec![0], vec![0, 5]),
            // Numbers are not in the index: alone they select every row, beside words the words.
            ("10", vec![0], vec![0, 1, 2, 3, 4, 5]),
            ("\"peer 10\"", vec![0], vec![0]),
            ("absent", vec![], vec![]),
        ] {
            assert_eq!(expected(query), exact, "in memory: {query}");
            assert_eq!(index.candidates(query).unwrap(), candidates, "on disk: {query}");
        }
        assert!(index.candidates("body:(unclosed").is_err());

        // Substrings, as LogQL's `|=`: candidates cover every body containing the needle.
        for (needle, candidates) in [
            ("req-7f3a9c1e5b", vec![2]),
            ("q-7f3a", vec![2]),
            // Only the cheap prefix `re.*` narrows: a superset, decided on the text.
            ("onnection re", vec![0, 2, 5]),
            ("disk full", vec![4]),
            // The last word is a prefix: a range of the term dictionary, `err` up to `ers`.
            ("g err", vec![4, 5]),
            ("error whi", vec![5]),
            ("10.0.0.1", vec![0, 1, 2, 3, 4, 5]),
            ("peer 10", vec![0]),
            ("absent-word", vec![]),
            ("", vec![0, 1, 2, 3, 4, 5]),
        ] {
            let found = index.substring_candidates(needle).unwrap();
            assert_eq!(found, candidates, "substring {needle:?}");
            for (row, body) in BODIES.iter().enumerate() {
                if body.is_some_and(|b| b.contains(needle)) {
                    assert!(found.contains(&(row as u64)), "{needle:?} misses row {row}");
                }
            }
        }
    }

    #[test]
    fn a_document_of_several_rows_selects_all_of_them() {
        let dir = tempfile::tempdir().unwrap();
        // Documents of rows 0..4 and 4..6.
        build_index(dir.path(), BODIES.iter().copied(), 4).unwrap();
        let index = FullTextIndex::open(dir.path()).unwrap();
        assert_eq!(index.reader.searcher().num_docs(), 2);
        for (query, candidates) in [
            ("connection", vec![0, 1, 2, 3, 4, 5]),
            ("timeout", vec![0, 1, 2, 3]),
            ("disk", vec![4, 5]),
            // Terms of different rows of one document: a candidate, decided on the text.
            ("\"refused timeout\"", vec![0, 1, 2, 3]),
            ("absent", vec![]),
        ] {
            let found = index.candidates(query).unwrap();
            assert_eq!(found, candidates, "{query}");
            for row in expected(query) {
                assert!(found.contains(&row), "{query} misses row {row}");
            }
        }
        // No token runs from one row into the next (row 0 ends in "1", row 2 starts "request").
        assert!(index.candidates("1request").unwrap().is_empty());
        assert_eq!(index.substring_candidates("disk full").unwrap(), vec![4, 5]);
    }

    #[test]
    fn indexes_of_a_row_per_document_without_a_row_count_still_answer() {
        // The on-disk schema before documents held several rows: no `rows` field.
        let fields = filter_schema(false);
        let dir = tempfile::tempdir().unwrap();
        let index = Index::create_in_dir(dir.path(), fields.schema.clone()).unwrap();
        register_tokenizer(&index);
        write_documents(&index, &fields, BODIES.iter().copied(), 1, WRITER_MEMORY_BYTES).unwrap();
        let index = FullTextIndex::open(dir.path()).unwrap();
        assert_eq!(index.candidates("connection").unwrap(), vec![0, 5]);
        assert_eq!(index.substring_candidates("disk full").unwrap(), vec![4]);
    }

    /// An index of `segments` segments (one commit each) of `docs` documents each, every body
    /// "error <n>", a row per document.
    fn index_of_segments(dir: &Path, segments: usize, docs: usize) -> FullTextIndex {
        let fields = filter_schema(true);
        let index = Index::create_in_dir(dir, fields.schema.clone()).unwrap();
        register_tokenizer(&index);
        let rows = index.schema().get_field(ROWS_FIELD).unwrap();
        let mut writer: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES).unwrap();
        // A few segments stay below the merge policy's threshold: each commit stays a segment.
        writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
        for segment in 0..segments {
            for doc in 0..docs {
                let row = (segment * docs + doc) as u64;
                let mut document = TantivyDocument::new();
                document.add_text(fields.body, format!("error {row}"));
                document.add_u64(fields.row, row);
                document.add_u64(rows, 1);
                writer.add_document(document).unwrap();
            }
            writer.commit().unwrap();
        }
        writer.wait_merging_threads().unwrap();
        let index = FullTextIndex::open(dir).unwrap();
        assert_eq!(index.reader.searcher().segment_readers().len(), segments);
        index
    }

    #[test]
    fn a_cancelled_search_stops_before_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        let index = index_of_segments(dir.path(), 4, 10);
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let count = || asked.fetch_add(1, Ordering::Relaxed);

        // Not cancelled: asked once per segment (each is far below CANCEL_CHECK_DOCS), all rows.
        let rows = index.candidates_cancellable("error", &|| count() == usize::MAX).unwrap();
        assert_eq!(rows, (0..40).collect::<Vec<u64>>());
        assert_eq!(asked.swap(0, Ordering::Relaxed), 4);

        // Cancelled before: no segment is searched.
        let cancelled = CancelFlag::new();
        cancelled.cancel();
        assert!(matches!(index.candidates_cancellable("error", &cancelled), Err(Error::Cancelled)));
        assert!(matches!(index.substring_candidates_cancellable("rror", &cancelled), Err(Error::Cancelled)));

        // Cancelled during: two segments searched, the third one is where it stops, the fourth
        // is never asked about.
        let error = index.candidates_cancellable("error", &|| count() >= 2).unwrap_err();
        assert!(matches!(error, Error::Cancelled), "{error}");
        assert_eq!(asked.swap(0, Ordering::Relaxed), 3);

        // Dropping the guard (as a dropped query does) stops it the same way.
        let flag = CancelFlag::new();
        let guard = Mutex::new(Some(flag.cancel_on_drop()));
        let drop_after_one = || {
            if count() == 1 {
                drop(guard.lock().take());
            }
            flag.is_cancelled()
        };
        let error = index.substring_candidates_cancellable("error", &drop_after_one).unwrap_err();
        assert!(matches!(error, Error::Cancelled), "{error}");
        assert_eq!(asked.swap(0, Ordering::Relaxed), 2);
    }

    #[test]
    fn a_cancelled_search_stops_within_a_large_segment() {
        let dir = tempfile::tempdir().unwrap();
        let docs = 5 * CANCEL_CHECK_DOCS + 100;
        let index = index_of_segments(dir.path(), 1, docs);
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let count = || asked.fetch_add(1, Ordering::Relaxed);
        let rows = index.candidates_cancellable("error", &|| count() == usize::MAX).unwrap();
        assert_eq!(rows.len(), docs);
        // Before the segment, then after each CANCEL_CHECK_DOCS documents.
        assert_eq!(asked.swap(0, Ordering::Relaxed), 1 + 5);
        // Cancelled at the first question within the segment: the rest is not read.
        let error = index.candidates_cancellable("error", &|| count() >= 1).unwrap_err();
        assert!(matches!(error, Error::Cancelled), "{error}");
        assert_eq!(asked.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn bad_query_is_a_client_error() {
        let error = validate_query("body:(unclosed").unwrap_err();
        assert!(matches!(error, Error::FullTextQuery { .. }), "{error}");
        assert_eq!(error.class(), crate::error::ErrorClass::BadRequest);
    }

    /// Lines of the loghub samples (every 25th of each system), and bodies made for the
    /// analyzer's edges: tokens over its 40-byte limit, case folding beyond ASCII, no tokens.
    fn differential_bodies() -> Vec<Option<String>> {
        use std::io::Read;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/loghub");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.retain(|path| path.to_string_lossy().ends_with("_2k.log.gz"));
        files.sort();
        assert_eq!(files.len(), 16, "loghub samples in {}", dir.display());
        let mut bodies = Vec::new();
        for path in files {
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()).read_to_string(&mut text).unwrap();
            bodies.extend(text.lines().step_by(25).map(|line| Some(line.to_string())));
        }
        let long = "x".repeat(45);
        let exactly_forty = "y".repeat(40);
        let just_under = "z".repeat(39);
        bodies.extend(
            [
                format!("alpha {long} beta"),
                format!("alpha beta {long}"),
                format!("{long} alpha beta"),
                format!("alpha {exactly_forty} beta"),
                format!("alpha {just_under} beta"),
                "alpha beta alpha beta gamma".to_string(),
                "beta alpha".to_string(),
                "alpha alpha beta".to_string(),
                "Straße STRASSE straße".to_string(),
                "İstanbul ISTANBUL istanbul".to_string(),
                "ΣΊΣΥΦΟΣ σίσυφος".to_string(),
                "日本語 テスト error".to_string(),
                "req-7f3a9c1e5b failed: timeout".to_string(),
                "REQ 7F3A9C1E5B".to_string(),
                "error".to_string(),
                "...".to_string(),
                String::new(),
            ]
            .map(Some),
        );
        bodies.push(None);
        bodies
    }

    /// Queries [`BodyMatcher`] decides: words, phrases, `*` and boolean combinations.
    const MATCHER_QUERIES: &[&str] = &[
        "error",
        "ERROR",
        "Error",
        "failed",
        "info",
        "absent",
        "blk",
        "PacketResponder",
        "dfs.DataNode$PacketResponder",
        "127.0.0.1",
        "173.234.31.186",
        "req-7f3a9c1e5b",
        "7f3a9c1e5b",
        "\"sshd[24200]:\"",
        "\"workerEnv.init()\"",
        "user root",
        "root user",
        "\"for user root\"",
        "\"user root\"",
        "\"root user\"",
        "\"session opened for user\"",
        "\"Received block\"",
        "\"for block blk\"",
        "\"invalid user\"",
        "\"Invalid user webmaster from\"",
        "\"alpha beta\"",
        "\"beta alpha\"",
        "\"alpha alpha beta\"",
        "\"alpha beta gamma\"",
        "\"alpha beta alpha\"",
        "\"alpha xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx beta\"",
        "\"qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq alpha beta\"",
        "\"alpha beta qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq\"",
        "\"alpha yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy beta\"",
        "\"alpha zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz beta\"",
        "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy",
        "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        "alpha-beta",
        "'alpha beta'",
        "\"error\"",
        "\"error\"~2",
        "straße",
        "STRASSE",
        "İstanbul",
        "istanbul",
        "σίσυφος",
        "ΣΊΣΥΦΟΣ",
        "日本語",
        "テスト error",
        "error failed",
        "error AND failed",
        "error OR failed",
        "error || failed",
        "error && failed",
        "+error +failed",
        "error -failed",
        "error NOT failed",
        "error AND NOT failed",
        "+error -failed -info",
        "error OR failed -root",
        "error OR (failed -root)",
        "(error OR failed) AND (user OR block)",
        "(error OR failed) (user OR block)",
        "error OR failed AND user",
        "+error failed",
        "+error OR failed",
        "error +failed",
        "(-error) info",
        "(-error) OR info",
        "info OR (-error)",
        "(error -error) OR info",
        "error^3 OR info",
        "(error OR info)^2",
        "body:error",
        "body:\"user root\"",
        "body:(error OR info)",
        "body:(error info)",
        "*",
        "(*)",
        "*^2",
        "* -error",
        "* AND error",
        "* OR error",
        "error OR *",
        "\"\"",
        "\"...\"",
        "\"...\" error",
        "error \"...\"",
        "error OR \"...\"",
        "error -\"...\"",
        "(\"...\") error",
        "(\"...\" -failed) error",
        "(\"...\" -failed) OR error",
        "\"...\"^2 error",
        "\"...\"^2 OR error",
        "\"...\"^1 error",
        "error -\"...\"^2",
        "(\"...\" OR \"...\") error",
        "",
        "   ",
        "error*",
        "err*",
        "*error",
        "a\\-b",
    ];

    /// Queries the in-memory index still answers.
    const INDEX_QUERIES: &[&str] = &[
        "\"user root\"~1",
        "\"alpha beta\"~2",
        "\"for user\"*",
        "\"alpha be\"*",
        "body:[a TO c]",
        "body: IN [error info]",
        "body:*",
        "error AND body:[e TO f]",
    ];

    fn differential(queries: &[&str], bodies: &StringArray) -> usize {
        let mut agreeing_hits = 0;
        for query in queries {
            let reference = matches_bodies_by_index(bodies, query);
            let answer = matches_bodies(bodies, query);
            match (reference, answer) {
                (Ok(reference), Ok(answer)) => {
                    for row in 0..bodies.len() {
                        assert_eq!(
                            answer.value(row),
                            reference.value(row),
                            "query {query:?}, body {:?}",
                            bodies.is_valid(row).then(|| bodies.value(row))
                        );
                    }
                    agreeing_hits += reference.true_count();
                }
                (Err(_), Err(_)) => {}
                (reference, answer) => panic!("query {query:?}: index {reference:?}, matcher {answer:?}"),
            }
        }
        agreeing_hits
    }

    #[test]
    fn matcher_agrees_with_the_in_memory_index() {
        let bodies = StringArray::from(differential_bodies());
        for query in MATCHER_QUERIES {
            assert!(compiled_query(query).unwrap().matcher.is_some(), "{query:?} should not need the index");
        }
        for query in INDEX_QUERIES {
            assert!(compiled_query(query).unwrap().matcher.is_none(), "{query:?} needs the index");
        }
        // The comparison means something only if the queries find rows.
        assert!(differential(MATCHER_QUERIES, &bodies) > 10_000);
        differential(INDEX_QUERIES, &bodies);
        // Errors stay the parser's.
        for query in [
            "-error",
            "NOT error",
            "\"...\" -error",
            "body:(unclosed",
            "sshd[24200]:",
            "nosuchfield:x",
            "row:5",
            "\"a\"*",
        ] {
            let error = matches_bodies(&bodies, query).unwrap_err();
            assert!(matches!(error, Error::FullTextQuery { .. }), "{query:?}: {error}");
        }
    }

    #[test]
    fn null_bodies_never_match() {
        let bodies = StringArray::from(vec![None, Some("error"), None]);
        for query in ["*", "* AND body:[a TO z]"] {
            assert_eq!(
                matches_bodies(&bodies, query).unwrap(),
                BooleanArray::from(vec![false, true, false]),
                "{query}"
            );
        }
    }

    #[test]
    fn all_null_bodies_match_nothing() {
        let array = StringArray::from(vec![None::<&str>, None]);
        let matched = matches_bodies(&array, "anything").unwrap();
        assert_eq!(matched.true_count(), 0);
        assert_eq!(matched.len(), 2);
    }
}
