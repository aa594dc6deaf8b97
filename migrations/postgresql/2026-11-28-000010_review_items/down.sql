DROP TABLE cp_review_items;
