//! `html_serving`: render an HTML page from templates, as FaaSMem's `html_serving` does.
//!
//! FaaSMem's html_serving renders a Jinja2 template with a data set and returns the page.
//! Here a small Jinja-like engine (`{{ var.attr }}`, `{% for x in list %}`,
//! `{% if var.attr %}`, `{% include name %}`, HTML escaping) compiles four templates at init,
//! and a catalogue of 120 000 products (each a record with its own heap-allocated name,
//! description and tag list) in 48 categories is generated. An invocation renders the page
//! of one category (category 5 for input 0, 29 for input 1) with every product card of that
//! category, a navigation bar over all categories, and a featured-products sidebar shared by
//! all pages.
//!
//! Memory behaviour: scattered reads. The catalogue takes about 39 MiB of small heap objects
//! (product records, then their names, descriptions and tag lists, interleaved); a page
//! reads about 2 500 products spread over all of it plus the featured ones, which touches
//! roughly 60 % of the catalogue's pages, builds a fresh output string of about 2 MiB, and
//! walks about 57 % of a 32 MiB runtime heap: about 45 MiB touched per invocation
//! (estimate). The two inputs share the runtime core, the templates, the navigation and the
//! featured products, and many catalogue pages.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::runtime::Runtime;
use crate::synth::{push_word, word_rank, Rng};
use crate::{Checksum, Function, FunctionInfo};

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "html_serving",
    description: "Jinja-like template rendering of a catalogue page over 120 000 products",
    mem_mib: 160,
    inputs: 2,
    workload: true,
    arg: None,
};

/// Number of products in the catalogue.
const PRODUCTS: usize = 120_000;
/// Number of categories.
const CATEGORIES: usize = 48;
/// Number of distinct tags.
const TAGS: usize = 512;
/// Number of products in the featured sidebar.
const FEATURED: usize = 64;
/// Category whose page each input renders.
const PAGE_CATEGORY: [usize; 2] = [5, 29];
/// Deepest nesting of includes; deeper ones render nothing (guards against cycles).
const MAX_INCLUDE_DEPTH: usize = 16;
/// Payload bytes of the simulated runtime heap (Jinja2, the web framework, the interpreter).
const RUNTIME_BYTES: usize = 32 << 20;

/// The templates, by name. The page is rendered from `base`.
const TEMPLATES: [(&str, &str); 4] = [
    (
        "base",
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{{ page.title }}</title>\
         </head>\n<body>\n<nav>{% for category in categories %}<a href=\"/c/{{ category.slug }}\">\
         {{ category.name }} ({{ category.count }})</a> {% endfor %}</nav>\n<main>{% include listing %}\
         </main>\n<aside><h2>Featured</h2>{% for product in featured %}{% include card %}{% endfor %}\
         </aside>\n<footer>{{ page.footer }}</footer>\n</body></html>\n",
    ),
    (
        "listing",
        "<h1>{{ page.title }}</h1><p>{{ page.count }} products</p>\n<ul class=\"grid\">\
         {% for product in products %}<li>{% include card %}</li>\n{% endfor %}</ul>",
    ),
    (
        "card",
        "<div class=\"card\" id=\"p{{ product.id }}\"><h3>{{ product.name }}</h3>\
         <span class=\"price\">{{ product.price }}</span>{% if product.on_sale %}\
         <span class=\"sale\">On sale!</span>{% endif %}<p>{{ product.description }}</p>\
         <ul class=\"tags\">{% for tag in product.tags %}{% include tag %}{% endfor %}</ul></div>",
    ),
    ("tag", "<li><a href=\"/t/{{ tag }}\">#{{ tag }}</a></li>"),
];

/// A reference to a value in the render scope: `variable` or `variable.attribute`.
#[derive(Debug)]
struct Expression {
    variable: String,
    attribute: Option<String>,
}

impl Expression {
    fn parse(text: &str) -> Self {
        let text = text.trim();
        match text.split_once('.') {
            Some((variable, attribute)) => Self {
                variable: String::from(variable.trim()),
                attribute: Some(String::from(attribute.trim())),
            },
            None => Self {
                variable: String::from(text),
                attribute: None,
            },
        }
    }
}

/// A compiled template node.
#[derive(Debug)]
enum Node {
    /// Literal text.
    Text(String),
    /// `{{ expression }}`: the value, HTML-escaped.
    Output(Expression),
    /// `{% for variable in collection %} body {% endfor %}`.
    For {
        variable: String,
        collection: Expression,
        body: Vec<Node>,
    },
    /// `{% if condition %} body {% endif %}`.
    If {
        condition: Expression,
        body: Vec<Node>,
    },
    /// `{% include name %}`.
    Include(String),
}

/// Compiles template source into nodes. Never fails: anything that is not a recognised tag
/// is kept as text, and blocks left open are closed at the end of the template.
/// A stray `{% endfor %}` or `{% endif %}` at the top level is dropped.
fn compile(source: &str) -> Vec<Node> {
    let mut rest = source;
    let mut nodes = Vec::new();
    while !rest.is_empty() {
        nodes.extend(compile_block(&mut rest));
    }
    nodes
}

/// Compiles from `rest` up to the end of the enclosing block (`{% endfor %}` or
/// `{% endif %}`) or of the template, advancing `rest` past what it compiled.
fn compile_block(rest: &mut &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    loop {
        let Some(open) = rest.find('{') else {
            push_text(&mut nodes, rest);
            *rest = "";
            return nodes;
        };
        let (text, tail) = rest.split_at(open);
        push_text(&mut nodes, text);
        let close = if tail.starts_with("{{") {
            "}}"
        } else if tail.starts_with("{%") {
            "%}"
        } else {
            push_text(&mut nodes, "{");
            *rest = &tail[1..];
            continue;
        };
        let Some(end) = tail.find(close) else {
            push_text(&mut nodes, tail);
            *rest = "";
            return nodes;
        };
        let inner = tail[2..end].trim();
        *rest = &tail[end + 2..];
        if close == "}}" {
            nodes.push(Node::Output(Expression::parse(inner)));
            continue;
        }
        let mut words = inner.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("for"), Some(variable), Some("in"), Some(collection)) => {
                let body = compile_block(rest);
                nodes.push(Node::For {
                    variable: String::from(variable),
                    collection: Expression::parse(collection),
                    body,
                });
            }
            (Some("if"), Some(condition), None, None) => {
                let body = compile_block(rest);
                nodes.push(Node::If {
                    condition: Expression::parse(condition),
                    body,
                });
            }
            (Some("include"), Some(name), None, None) => {
                nodes.push(Node::Include(String::from(name)))
            }
            (Some("endfor" | "endif"), None, ..) => return nodes,
            _ => push_text(&mut nodes, &tail[..end + 2]),
        }
    }
}

/// Appends literal text, merging it into a preceding text node.
fn push_text(nodes: &mut Vec<Node>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Node::Text(previous)) = nodes.last_mut() {
        previous.push_str(text);
    } else {
        nodes.push(Node::Text(String::from(text)));
    }
}

/// One catalogue product.
#[derive(Debug)]
struct Product {
    id: u32,
    name: String,
    description: String,
    price_cents: u32,
    on_sale: bool,
    tags: Vec<u16>,
}

/// One catalogue category.
#[derive(Debug)]
struct Category {
    name: String,
    slug: String,
    products: Vec<u32>,
}

/// What one page shows, beyond the catalogue.
#[derive(Debug)]
struct Page {
    title: String,
    category: usize,
}

/// A value the templates can output, test or iterate.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Text(&'a str),
    Number(u64),
    Price(u32),
    Flag(bool),
    Product(&'a Product),
    Category(&'a Category),
    Page(&'a Page),
    Missing,
}

/// The render scope: variables bound by the page and by enclosing loops, innermost last.
type Scope<'a> = Vec<(&'a str, Value<'a>)>;

/// The catalogue and compiled templates.
pub(crate) struct HtmlServing {
    templates: Vec<(&'static str, Vec<Node>)>,
    products: Vec<Product>,
    categories: Vec<Category>,
    tags: Vec<String>,
    featured: Vec<u32>,
    runtime: Runtime,
}

impl HtmlServing {
    pub(crate) fn init() -> Self {
        let runtime = Runtime::build(RUNTIME_BYTES, 0x6874_6d6c);
        let templates = TEMPLATES
            .iter()
            .map(|&(name, source)| (name, compile(source)))
            .collect();
        let mut rng = Rng::new(0x0063_6174_616c_6f67);
        let tags: Vec<String> = (0..TAGS).map(|rank| words(&[rank + 40])).collect();
        let mut categories: Vec<Category> = (0..CATEGORIES)
            .map(|index| {
                let name = words(&[index + 7, (index * 13) % 97]);
                Category {
                    slug: name.replace(' ', "-"),
                    name,
                    products: Vec::new(),
                }
            })
            .collect();
        let mut products = Vec::with_capacity(PRODUCTS);
        for id in 0..PRODUCTS {
            let name_words: Vec<usize> = (0..rng.in_range(2..5))
                .map(|_| word_rank(&mut rng, 5000))
                .collect();
            let description_words: Vec<usize> = (0..rng.in_range(10..30))
                .map(|_| word_rank(&mut rng, 20_000))
                .collect();
            let tag_count = rng.in_range(1..6);
            products.push(Product {
                id: id as u32,
                name: capitalised(words(&name_words)),
                description: capitalised(words(&description_words)) + " & more <details>.",
                price_cents: rng.in_range(99..250_000) as u32,
                on_sale: rng.below(5) == 0,
                tags: (0..tag_count).map(|_| rng.below(TAGS) as u16).collect(),
            });
            categories[rng.below(CATEGORIES)].products.push(id as u32);
        }
        let featured = (0..FEATURED)
            .map(|i| ((i * 7919 + 13) % PRODUCTS) as u32)
            .collect();
        Self {
            templates,
            products,
            categories,
            tags,
            featured,
            runtime,
        }
    }

    /// Renders the page of `input` into a fresh string.
    fn render_page(&self, input: u32) -> String {
        let category = PAGE_CATEGORY[input as usize % PAGE_CATEGORY.len()];
        let page = Page {
            title: self.categories[category].name.clone(),
            category,
        };
        let mut out = String::with_capacity(1 << 20);
        let mut scope: Scope<'_> = Vec::new();
        scope.push(("page", Value::Page(&page)));
        self.render_template("base", &mut scope, &mut out, 0);
        out
    }

    fn render_template<'a>(
        &'a self,
        name: &str,
        scope: &mut Scope<'a>,
        out: &mut String,
        depth: usize,
    ) {
        if depth > MAX_INCLUDE_DEPTH {
            return;
        }
        if let Some((_, nodes)) = self.templates.iter().find(|(n, _)| *n == name) {
            self.render_nodes(nodes, scope, out, depth);
        }
    }

    fn render_nodes<'a>(
        &'a self,
        nodes: &'a [Node],
        scope: &mut Scope<'a>,
        out: &mut String,
        depth: usize,
    ) {
        for node in nodes {
            match node {
                Node::Text(text) => out.push_str(text),
                Node::Output(expression) => write_value(self.evaluate(expression, scope), out),
                Node::For {
                    variable,
                    collection,
                    body,
                } => {
                    for item in self.iterate(collection, scope) {
                        scope.push((variable, item));
                        self.render_nodes(body, scope, out, depth);
                        scope.pop();
                    }
                }
                Node::If { condition, body } => {
                    if truthy(self.evaluate(condition, scope)) {
                        self.render_nodes(body, scope, out, depth);
                    }
                }
                Node::Include(name) => self.render_template(name, scope, out, depth + 1),
            }
        }
    }

    /// Looks `expression` up in `scope`.
    fn evaluate<'a>(&'a self, expression: &Expression, scope: &Scope<'a>) -> Value<'a> {
        let Some(&(_, value)) = scope
            .iter()
            .rev()
            .find(|(name, _)| *name == expression.variable)
        else {
            return Value::Missing;
        };
        let Some(attribute) = expression.attribute.as_deref() else {
            return value;
        };
        match (value, attribute) {
            (Value::Product(p), "id") => Value::Number(u64::from(p.id)),
            (Value::Product(p), "name") => Value::Text(&p.name),
            (Value::Product(p), "description") => Value::Text(&p.description),
            (Value::Product(p), "price") => Value::Price(p.price_cents),
            (Value::Product(p), "on_sale") => Value::Flag(p.on_sale),
            (Value::Category(c), "name") => Value::Text(&c.name),
            (Value::Category(c), "slug") => Value::Text(&c.slug),
            (Value::Category(c), "count") => Value::Number(c.products.len() as u64),
            (Value::Page(p), "title") => Value::Text(&p.title),
            (Value::Page(p), "count") => {
                Value::Number(self.categories[p.category].products.len() as u64)
            }
            (Value::Page(_), "footer") => Value::Text("© snapbpf shop — prices include VAT"),
            _ => Value::Missing,
        }
    }

    /// The items a `for` loop over `collection` visits, in a fresh list.
    fn iterate<'a>(&'a self, collection: &Expression, scope: &Scope<'a>) -> Vec<Value<'a>> {
        let products = |ids: &'a [u32]| -> Vec<Value<'a>> {
            ids.iter()
                .map(|&id| Value::Product(&self.products[id as usize]))
                .collect()
        };
        match (
            collection.variable.as_str(),
            collection.attribute.as_deref(),
        ) {
            ("categories", None) => self.categories.iter().map(Value::Category).collect(),
            ("featured", None) => products(&self.featured),
            ("products", None) => match scope.iter().find(|(name, _)| *name == "page") {
                Some((_, Value::Page(page))) => products(&self.categories[page.category].products),
                _ => Vec::new(),
            },
            (variable, Some("tags")) => match scope.iter().rev().find(|(n, _)| *n == variable) {
                Some((_, Value::Product(p))) => p
                    .tags
                    .iter()
                    .map(|&tag| Value::Text(&self.tags[usize::from(tag)]))
                    .collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
}

/// Whether a value counts as true in an `if`.
fn truthy(value: Value<'_>) -> bool {
    match value {
        Value::Flag(flag) => flag,
        Value::Number(n) => n != 0,
        Value::Text(text) => !text.is_empty(),
        Value::Missing => false,
        Value::Price(_) | Value::Product(_) | Value::Category(_) | Value::Page(_) => true,
    }
}

/// Writes a value as HTML (text escaped, prices as dollars).
fn write_value(value: Value<'_>, out: &mut String) {
    // Writing to a String cannot fail.
    let _ = match value {
        Value::Text(text) => {
            escape_html(text, out);
            Ok(())
        }
        Value::Number(n) => write!(out, "{n}"),
        Value::Price(cents) => write!(out, "${}.{:02}", cents / 100, cents % 100),
        Value::Flag(flag) => write!(out, "{flag}"),
        Value::Product(_) | Value::Category(_) | Value::Page(_) | Value::Missing => Ok(()),
    };
}

/// Appends `text` with `&`, `<`, `>`, `"` and `'` escaped.
fn escape_html(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

/// The words of the given ranks, separated by spaces.
fn words(ranks: &[usize]) -> String {
    let mut bytes = Vec::new();
    for (i, &rank) in ranks.iter().enumerate() {
        if i > 0 {
            bytes.push(b' ');
        }
        push_word(rank, &mut bytes);
    }
    // Syllables are ASCII, so this never fails.
    String::from_utf8(bytes).unwrap_or_default()
}

/// `text` with its first letter upper-cased.
fn capitalised(mut text: String) -> String {
    if let Some(first) = text.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    text
}

impl Function for HtmlServing {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        sum.update_u64(self.runtime.walk(input));
        let page = self.render_page(input);
        sum.update(page.as_bytes());
        sum.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_renders_loops_conditions_and_escapes() {
        let nodes =
            compile("a{% for x in xs %}[{{ x }}]{% endfor %}{% if y %}Y{% endif %}{ {% bogus %}");
        assert_eq!(nodes.len(), 4, "{nodes:?}");
        assert!(matches!(&nodes[3], Node::Text(t) if t == "{ {% bogus %}"));
        let mut out = String::new();
        escape_html("<a href='x'>&</a>", &mut out);
        assert_eq!(out, "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;");
    }

    #[test]
    fn page_lists_every_product_of_its_category() {
        let shop = HtmlServing::init();
        for input in 0..INFO.inputs {
            let page = shop.render_page(input);
            let category = &shop.categories[PAGE_CATEGORY[input as usize]];
            let cards = page.matches("<div class=\"card\"").count();
            assert_eq!(cards, category.products.len() + FEATURED);
            assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
            assert!(page.contains(&alloc::format!("{} products", category.products.len())));
            assert!(!page.contains("{{") && !page.contains("{%"));
            assert!(page.contains("&amp; more &lt;details&gt;."));
        }
    }
}
