DROP TABLE cp_report_mail;
